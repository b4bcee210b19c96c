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
# RUN holds a checkpoint. Exit codes as pipelines/cluster/torchrun_single_node.sh (75: pre-empted, rerun).
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
if [ -z "${NPROC:-}" ]; then
    NPROC=$(nvidia-smi -L 2>/dev/null | wc -l)
    [ "$NPROC" -ge 1 ] || NPROC=1
fi
RESUME=()
[ -f "$RUN/checkpoints/latest.pt" ] && RESUME=(--resume)

export TORCH_NCCL_ASYNC_ERROR_HANDLING=1   # turn NCCL timeouts into errors that end the process
"$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc_per_node="$NPROC" \
    --rdzv_id="$RDZV_ID" --rdzv_backend=c10d --rdzv_endpoint="$RDZV_HOST:$RDZV_PORT" \
    -m brats_seg train --config "$CONFIG" --data "$DATA" --out "$RUN" --fold "$FOLD" "${RESUME[@]}" "$@"
rc=$?

status=$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['status'])" "$RUN/run.json" 2>/dev/null || echo unknown)
if [ "$status" = "preempted" ]; then
    echo "pre-empted at a checkpoint; run the same command again (on every node) to resume"
    exit 75
fi
exit $rc
