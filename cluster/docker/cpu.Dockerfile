# The CPU image: the control plane (`myopia serve`), the MLflow server, and Ray head and CPU workers.
# Build from the repository root: docker build -f cluster/docker/cpu.Dockerfile -t myopia:cpu .
FROM python:3.11-slim-bookworm

# g++ builds DeepSpeed's small shared-memory op on first use (cached in $TORCH_EXTENSIONS_DIR).
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 myopia \
 && mkdir -p /data /mlartifacts /opt/venv && chown myopia:myopia /data /mlartifacts /opt/venv

USER myopia
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    MYOPIA_DATA_DIR=/data \
    TORCH_EXTENSIONS_DIR=/data/torch_extensions \
    DS_ACCELERATOR=cpu \
    RAY_USAGE_STATS_ENABLED=0
WORKDIR /app

# The pinned set first (a layer that changes only with the lock); torch's CPU wheel from PyTorch's CPU index.
COPY --chown=myopia:myopia pyproject.toml requirements.lock README.md ./
RUN python -m venv /opt/venv \
 && pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install -r requirements.lock

COPY --chown=myopia:myopia api ./api
COPY --chown=myopia:myopia services ./services
COPY --chown=myopia:myopia trainers ./trainers
COPY --chown=myopia:myopia cluster ./cluster
RUN pip install --no-deps -e .

VOLUME /data
EXPOSE 8000
CMD ["myopia", "serve", "--host", "0.0.0.0", "--port", "8000"]
