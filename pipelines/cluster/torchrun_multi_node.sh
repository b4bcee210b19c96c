#!/bin/bash
# Train across several machines with torchrun and c10d rendezvous: start this script once on every
# node with the same arguments; the agents meet at RDZV_HOST:RDZV_PORT (any one of the nodes, e.g.
# the first) and number the nodes themselves. pipelines/cluster/slurm_train_multi_node.sbatch runs the same
# torchrun command under srun (RDZV_HOST: the job's first node, RDZV_ID: the job id).
#
#   NNODES=2 NPROC=4 RDZV_HOST=node01 RDZV_PORT=29500 RDZV_ID=fold0 \
#       pipelines/cluster/torchrun_multi_node.sh data/preprocessed/preprocessed.json runs/fold0 0 [key=value ...]
#
# World size = NNODES x NPROC. DATA and RUN must be on a filesystem every node sees; only global
# rank 0 writes. A dead or hung rank ends the job after distributed.timeout_s. Resumes by itself when
# RUN holds a checkpoint (--auto-resume: latest.pt or previous.pt). Pre-emption, SHUTDOWN_TIMEOUT,
# loader workers and exit codes as pipelines/cluster/torchrun_single_node.sh (75: pre-empted, rerun on
# every node).
set -uo pipefail
DATA=${1:?preprocessed.json}
RUN=${2:?run directory}
FOLD=${3:-0}
shift $(( $# < 3 ? $# : 3 ))
CONFIG=${CONFIG:-pipelines/train/train_gpu_brats.yaml}
PYTHON=${PYTHON:-python}
NNODES=${NNODES:?number of nodes}
RDZV_HOST=${RDZV_HOST:?rendezvous host (one of the nodes)}
RDZV_PORT=${RDZV_PORT:-29500}
RDZV_ID=${RDZV_ID:-brats-seg}
SHUTDOWN_TIMEOUT=${SHUTDOWN_TIMEOUT:-240}
# shellcheck source=SCRIPTDIR/launch_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
before=$(cksum "$RUN/run.json" 2>/dev/null)

# NCCL: abort the communicator on a timeout but leave the process to raise, so the rank prints the
# project's one-line diagnosis (engine/loop.py run_guarded) instead of being torn down by the watchdog.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-2}
"$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc_per_node="$NPROC" \
    --rdzv_id="$RDZV_ID" --rdzv_backend=c10d --rdzv_endpoint="$RDZV_HOST:$RDZV_PORT" \
    --shutdown-timeout="$SHUTDOWN_TIMEOUT" \
    -m brats_seg train --config "$CONFIG" --data "$DATA" --out "$RUN" --fold "$FOLD" --auto-resume \
    "data.num_workers=$WORKERS" ${1+"$@"}
rc=$?

if preempted "$before"; then
    echo "pre-empted at a checkpoint; run the same command again (on every node) to resume"
    exit 75
fi
# torch elastic's c10d rendezvous: when the node hosting the store leaves first, an agent still in its
# monitor loop fails on the closed store (RendezvousConnectionError, exit 1) after every rank is done.
# Rank 0 writes "finished" only once training is complete on all ranks, so that exit is not a failure.
if [ "$rc" -ne 0 ] && finished "$before"; then
    echo "note: torchrun exited $rc after the run finished ($RUN/run.json); counted as success" >&2
    exit 0
fi
exit $rc
