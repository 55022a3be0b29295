# A Ray node image with m3w installed: used for the head and the workers of a build cluster
# (docker/ray-cluster-rayjob.yaml). Build from the repository root:
#   docker build -f docker/ray-worker.Dockerfile -t m3w-ray:0.1.0 .
# The Ray version must match the driver's (Ray refuses to mix versions across a cluster).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu
FROM ${RAY_IMAGE}

WORKDIR /home/ray/m3w
# Only what the package needs; tests, benchmarks and data stay out of the image.
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users m3w_builder ./m3w_builder
COPY --chown=ray:users model ./model
COPY --chown=ray:users pipelines ./pipelines

# The base image already has ray[default]; pip keeps it (m3w asks for ray>=2.40) and adds the rest.
# s3fs/gcsfs let `m3w build` read s3:// and gs:// inputs through fsspec.
RUN pip install --no-cache-dir . \
 && pip install --no-cache-dir "s3fs>=2023.1" "gcsfs>=2023.1" \
 && python -c "import m3w_builder, pipelines.build; print('m3w ok')"

ENV RAY_USAGE_STATS_ENABLED=0 \
    PYTHONUNBUFFERED=1
