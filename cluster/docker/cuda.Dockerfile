# The CUDA image: Ray workers (and a head) on GPU nodes; nccl between GPUs, DeepSpeed's fused ops JIT-built with
# nvcc from the devel base. Build from the repository root:
#   docker build -f cluster/docker/cuda.Dockerfile -t myopia:cuda .
FROM nvidia/cuda:12.9.1-cudnn-devel-ubuntu22.04

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev g++ \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 myopia \
 && mkdir -p /data /mlartifacts /opt/venv && chown myopia:myopia /data /mlartifacts /opt/venv

USER myopia
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    MYOPIA_DATA_DIR=/data \
    TORCH_EXTENSIONS_DIR=/data/torch_extensions \
    RAY_USAGE_STATS_ENABLED=0
WORKDIR /app

# torch==2.13.0 from PyPI is the CUDA build on Linux x86_64.
COPY --chown=myopia:myopia pyproject.toml requirements.lock README.md ./
RUN python3.11 -m venv /opt/venv \
 && pip install torch==2.13.0 \
 && pip install -r requirements.lock

COPY --chown=myopia:myopia api ./api
COPY --chown=myopia:myopia services ./services
COPY --chown=myopia:myopia trainers ./trainers
COPY --chown=myopia:myopia cluster ./cluster
RUN pip install --no-deps -e .

VOLUME /data
CMD ["ray", "start", "--address=ray-head:6379", "--block"]
