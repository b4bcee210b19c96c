#!/bin/bash
# Train with torchrun on one machine: NPROC processes (one per GPU; CPU processes use gloo).
# `brats-seg train --auto-resume` continues when RUN holds a checkpoint (latest.pt or previous.pt) and
# starts a new run otherwise, so the same command is also the restart after a pre-emption.
# pipelines/cluster/slurm_train_single_node.sbatch runs the same torchrun command under srun.
#
#   NPROC=4 CONFIG=pipelines/train/train_gpu_brats.yaml pipelines/cluster/torchrun_single_node.sh \
#       data/preprocessed/preprocessed.json runs/fold0 0 [section.key=value ...]
#
# Pre-emption: SIGTERM to the whole job (what SLURM's --signal does to a job step) or to torchrun alone
# (it forwards it): every rank finishes its step, validation or checkpoint write, the ranks agree to
# stop, rank 0 writes a checkpoint and run.json "preempted", and all ranks exit 75. torchrun gives them
# SHUTDOWN_TIMEOUT seconds (default 240) before it SIGKILLs them: keep it above one step + one
# validation + one checkpoint write and below the scheduler's notice (SLURM --signal=TERM@300).
# Loader workers: data.num_workers = CPUs this process may use (nproc: its affinity) / NPROC - 1, at
# least 0; a data.num_workers=N argument overrides it.
#
# Exit codes: 0 finished; 75 stopped by SIGTERM after every rank reached the same step and rank 0
# wrote a checkpoint (this launch set run.json "status": "preempted"): run the same command again to
# continue; anything else: failed (2 = bad input, one `error:` line per rank). torchrun's own exit
# code is 1 both for a pre-emption and a failure, so the script reads run.json to tell them apart.
set -uo pipefail
DATA=${1:?preprocessed.json}
RUN=${2:?run directory}
FOLD=${3:-0}
shift $(( $# < 3 ? $# : 3 ))
CONFIG=${CONFIG:-pipelines/train/train_gpu_brats.yaml}
PYTHON=${PYTHON:-python}
SHUTDOWN_TIMEOUT=${SHUTDOWN_TIMEOUT:-240}
# shellcheck source=SCRIPTDIR/launch_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
before=$(cksum "$RUN/run.json" 2>/dev/null)

# ${1+"$@"}: no extra arguments is fine under set -u with any bash
"$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" --shutdown-timeout="$SHUTDOWN_TIMEOUT" \
    -m brats_seg train --config "$CONFIG" --data "$DATA" --out "$RUN" --fold "$FOLD" --auto-resume \
    "data.num_workers=$WORKERS" ${1+"$@"}
rc=$?

if preempted "$before"; then
    echo "pre-empted at a checkpoint; run the same command again to resume"
    exit 75
fi
exit $rc
