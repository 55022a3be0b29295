#!/usr/bin/env bash
# Multi-node Flamingo training with torchrun, reading shards straight from object storage.
#
# Run this same script on every node (Slurm: `srun --ntasks-per-node 1 docker/torchrun-multinode.sh`;
# Kubernetes: one pod per node with the trainer image). Each node starts one process per GPU; the
# c10d rendezvous on $MASTER_ADDR:$MASTER_PORT forms the job. WORLD_SIZE = NNODES × GPUS_PER_NODE.
#
#   NNODES=4 MASTER_ADDR=node0 ./docker/torchrun-multinode.sh
#
# Data: each rank reads its own slice of the shard list (pipelines/train/data.py: split by node, then by
# DataLoader worker), so no shard is read twice within an epoch; `resampled: true` in the YAML draws
# shards with replacement instead (the usual choice for web-scale data). Shards are streamed with
# `pipe:` (any CLI that writes a shard to stdout) or an fsspec URL (s3://, gs://; s3fs/gcsfs are in
# the image). Checkpoints go to run.out, which must be a filesystem every node sees (NFS, Lustre,
# FSx): a restarted job resumes from out/checkpoints/latest with `--resume`.
set -euo pipefail

NNODES=${NNODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR to the first node\'s hostname}
MASTER_PORT=${MASTER_PORT:-29500}
JOB_ID=${JOB_ID:-m3w-flamingo}
CONFIG=${CONFIG:-/opt/m3w/docker/torchrun-multinode.yaml}

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export NCCL_ASYNC_ERROR_HANDLING=1

exec torchrun \
  --nnodes "${NNODES}" \
  --nproc-per-node "${GPUS_PER_NODE}" \
  --rdzv-backend c10d \
  --rdzv-endpoint "${MASTER_ADDR}:${MASTER_PORT}" \
  --rdzv-id "${JOB_ID}" \
  --max-restarts 3 \
  -m pipelines.train --config "${CONFIG}" --resume "$@"
