# The CPU image: the control plane (`myopia serve`), the MLflow server, and Ray head and CPU workers (compose).
# Build from the repository root: docker build -f cluster/docker/cpu.Dockerfile -t myopia:cpu .
FROM python:3.11.14-slim-bookworm

# g++ stays: on CPU, DeepSpeed JIT-builds its shared-memory comm op at the first run (cached in
# $TORCH_EXTENSIONS_DIR on the shared volume), so it is a run-time need, not a build tool.
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 myopia \
 && mkdir -p /data /mlartifacts /opt/venv && chown myopia:myopia /data /mlartifacts /opt/venv

USER 1000:1000
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MYOPIA_DATA_DIR=/data \
    TORCH_EXTENSIONS_DIR=/data/torch_extensions \
    DS_ACCELERATOR=cpu \
    RAY_USAGE_STATS_ENABLED=0
WORKDIR /app

# This image's lock, every file checked against its hash (no dev tools in it: `make locks`); torch's CPU build is
# on PyTorch's CPU index. The build backend first, from its own hashed lock: the lock's one sdist (deepspeed) and
# the project then build without build isolation, which would fetch a backend unchecked.
COPY --chown=1000:1000 cluster/docker/build.lock cluster/docker/cpu.lock ./cluster/docker/
RUN python -m venv /opt/venv \
 && pip install --require-hashes --no-deps -r cluster/docker/build.lock \
 && pip install --require-hashes --no-deps --no-build-isolation -r cluster/docker/cpu.lock \
        --extra-index-url https://download.pytorch.org/whl/cpu

# The code version both images must share (the API gives it to every job; a worker image of another version
# fails the job at once): `--build-arg MYOPIA_VERSION=$(git rev-parse --short HEAD)`.
ARG MYOPIA_VERSION=unversioned
ENV MYOPIA_VERSION=$MYOPIA_VERSION
COPY --chown=1000:1000 pyproject.toml README.md ./
COPY --chown=1000:1000 api ./api
COPY --chown=1000:1000 services ./services
COPY --chown=1000:1000 trainers ./trainers
COPY --chown=1000:1000 cluster ./cluster
RUN pip install --no-deps --no-build-isolation .

VOLUME /data
EXPOSE 8000
# Binds beyond loopback: `myopia serve` refuses to start unless MYOPIA_API_TOKEN is set.
CMD ["myopia", "serve", "--host", "0.0.0.0", "--port", "8000"]
