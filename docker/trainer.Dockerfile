# The m3w trainer: `m3w train` / `torchrun -m pipelines.train` on CUDA GPUs.
# Build from the repository root:
#   docker build -f docker/trainer.Dockerfile -t m3w-trainer:0.1.0 .
# Run on one node with 8 GPUs (shards on object storage, see docker/torchrun-multinode.sh):
#   docker run --gpus all --ipc=host --network=host -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY \
#     -v $PWD/runs:/runs m3w-trainer:0.1.0 \
#     torchrun --nproc-per-node 8 -m pipelines.train --config /opt/m3w/docker/torchrun-multinode.yaml
# --ipc=host: DataLoader workers hand batches over through /dev/shm, which Docker caps at 64 MB.
#
# The official PyTorch CUDA runtime image brings torch (and its CUDA/cuDNN/NCCL); pip keeps that torch
# because m3w[train] only asks for torch>=2.3. Pick the tag that matches your driver.
ARG TORCH_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${TORCH_IMAGE}

WORKDIR /opt/m3w
COPY pyproject.toml README.md ./
COPY m3w_builder ./m3w_builder
COPY model ./model
COPY pipelines ./pipelines
COPY docker/torchrun-multinode.yaml ./docker/torchrun-multinode.yaml

# torchvision ships in the base image; m3w never uses it, and with it transformers would switch the
# image processors to their torchvision backend, so a GPU run would preprocess differently from the
# CPU runs and tests. s3fs/gcsfs: fsspec URLs (s3://, gs://) for --shards; awscli: the example
# config's `pipe:aws s3 cp ... -` streaming.
RUN pip uninstall -y torchvision || true \
 && pip install --no-cache-dir ".[train]" "s3fs>=2023.1" "gcsfs>=2023.1" awscli \
 && python -c "import torch, pipelines.train, model.flamingo; print('m3w trainer ok, torch', torch.__version__)"

ENV PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HOME=/cache/huggingface
# Mount a volume at /cache to keep downloaded LM/vision weights between runs.
VOLUME ["/cache", "/runs"]
CMD ["m3w", "train", "--help"]
