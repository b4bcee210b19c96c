#!/bin/bash
# Sourced by torchrun_single_node.sh and torchrun_multi_node.sh (needs PYTHON and RUN set):
# NPROC (GPUs, at least 1, unless given), WORKERS (loader workers per process from this process's CPU
# affinity) and `preempted BEFORE` (true when this launch rewrote run.json to "preempted"; a status left
# by an earlier pre-empted launch, read after this one failed at start-up, is not a pre-emption) and
# `finished BEFORE` (true when this launch rewrote run.json to a "finished" status).
if [ -z "${NPROC:-}" ]; then
    NPROC=$(nvidia-smi -L 2>/dev/null | wc -l)
    [ "$NPROC" -ge 1 ] || NPROC=1
fi
WORKERS=$(( $(nproc) / NPROC - 1 ))
[ "$WORKERS" -ge 0 ] || WORKERS=0

# rewrote BEFORE WANT: this launch changed run.json (cksum BEFORE) and its status is WANT, or starts
# with it when WANT ends in "*" ("finished*" also matches "finished (time budget)")
rewrote() {
    [ "$(cksum "$RUN/run.json" 2>/dev/null)" != "$1" ] || return 1
    "$PYTHON" -c "import json,sys; s=str(json.load(open(sys.argv[1])).get('status')); w=sys.argv[2]
sys.exit(not (s.startswith(w[:-1]) if w.endswith('*') else s == w))" "$RUN/run.json" "$2" 2>/dev/null
}
preempted() { rewrote "$1" preempted; }
finished() { rewrote "$1" 'finished*'; }
