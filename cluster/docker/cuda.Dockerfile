# The CUDA image: Ray head and GPU workers (cluster/ray-cluster.yaml, cluster/kuberay/). torch 2.13.0 from PyPI is
# built for CUDA 13.0 and brings its CUDA libraries as wheels (cuda-toolkit 13.0, cuDNN and NCCL for cu13: see
# cuda.lock), so the base is CUDA 13.0 too: its driver requirement (NVIDIA driver >= 580 on the node) is torch's.
# The runtime base, not devel: DeepSpeed builds no op (the optimizer is torch's AdamW), and the only code compiled on
# GPU nodes is Triton's (torch.compile's inductor, liger-kernel), which needs just a C compiler for its small launcher
# stubs: gcc and libc headers. Ubuntu 24.04 has no Python 3.11; uv installs CPython 3.11.14, a final release
# (python-build-standalone).
# Build from the repository root: docker build -f cluster/docker/cuda.Dockerfile -t myopia:cuda .
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04

# rsync and an ssh client: the Ray cluster launcher (docker mode) copies its bootstrap files into this container
# with rsync and reaches the nodes over ssh; gcc and libc6-dev: Triton builds its kernel launchers at run time.
# Ubuntu's image has a user of uid 1000 ("ubuntu"): it becomes myopia, the uid the manifests run as.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends rsync openssh-client ca-certificates gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && usermod --login myopia --home /home/myopia --move-home ubuntu && groupmod --new-name myopia ubuntu \
 && mkdir -p /data /mlartifacts /opt/venv /opt/python && chown myopia:myopia /data /mlartifacts /opt/venv /opt/python

COPY --from=uv /uv /usr/local/bin/uv
USER 1000:1000
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MYOPIA_DATA_DIR=/data \
    HF_HOME=/data/hf \
    TORCH_EXTENSIONS_DIR=/data/torch_extensions \
    RAY_USAGE_STATS_ENABLED=0
WORKDIR /app

# This image's lock, every file checked against its hash (no dev tools in it: `make locks`), installed by uv (the
# venv gets no unpinned pip). The build backend first, from its own hashed lock: the lock's one sdist (deepspeed)
# and the project then build without build isolation, which would fetch a backend unchecked.
COPY --chown=1000:1000 cluster/docker/build.lock cluster/docker/cuda.lock ./cluster/docker/
RUN uv python install 3.11.14 \
 && uv venv --python 3.11.14 /opt/venv \
 && uv pip install --require-hashes --no-deps -r cluster/docker/build.lock \
 && uv pip install --require-hashes --no-deps --no-build-isolation -r cluster/docker/cuda.lock

# The code version both images must share (the API gives it to every job; a worker image of another version
# fails the job at once): `--build-arg MYOPIA_VERSION=$(git rev-parse --short HEAD)`.
ARG MYOPIA_VERSION=unversioned
ENV MYOPIA_VERSION=$MYOPIA_VERSION
COPY --chown=1000:1000 pyproject.toml README.md ./
COPY --chown=1000:1000 api ./api
COPY --chown=1000:1000 services ./services
COPY --chown=1000:1000 trainers ./trainers
COPY --chown=1000:1000 cluster ./cluster
RUN uv pip install --no-deps --no-build-isolation .

VOLUME /data
CMD ["ray", "start", "--address=ray-head:6379", "--block"]
