#!/bin/bash
# Train with torchrun on one machine: NPROC processes (one per GPU; CPU processes use gloo).
# Resumes by itself when RUN already holds a checkpoint, so the same command is also the restart
# after a pre-emption. pipelines/cluster/slurm_train_single_node.sbatch runs the same torchrun command under srun.
#
#   NPROC=4 CONFIG=pipelines/train/train_gpu_brats.yaml pipelines/cluster/torchrun_single_node.sh \
#       data/preprocessed/preprocessed.json runs/fold0 0 [section.key=value ...]
#
# Exit codes: 0 finished; 75 stopped by SIGTERM after every rank reached the same step and rank 0
# wrote a checkpoint (run.json "status": "preempted"): run the same command again to continue;
# anything else: failed (2 = bad input, one `error:` line per rank).
set -uo pipefail
DATA=${1:?preprocessed.json}
RUN=${2:?run directory}
FOLD=${3:-0}
shift $(( $# < 3 ? $# : 3 ))
CONFIG=${CONFIG:-pipelines/train/train_gpu_brats.yaml}
PYTHON=${PYTHON:-python}
if [ -z "${NPROC:-}" ]; then
    NPROC=$(nvidia-smi -L 2>/dev/null | wc -l)
    [ "$NPROC" -ge 1 ] || NPROC=1
fi
RESUME=()
[ -f "$RUN/checkpoints/latest.pt" ] && RESUME=(--resume)

"$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
    -m brats_seg train --config "$CONFIG" --data "$DATA" --out "$RUN" --fold "$FOLD" "${RESUME[@]}" "$@"
rc=$?

status=$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['status'])" "$RUN/run.json" 2>/dev/null || echo unknown)
if [ "$status" = "preempted" ]; then
    echo "pre-empted at a checkpoint; run the same command again to resume"
    exit 75
fi
exit $rc
