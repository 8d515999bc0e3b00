"""Control-plane settings from the environment (prefix MYOPIA_), with embedded defaults for one machine."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MYOPIA_", extra="ignore")

    data_dir: Path = Field(Path.home() / ".myopia", description="data, checkpoints, local stores")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite in the data dir")
    ray_address: str | None = Field(
        None,
        validation_alias=AliasChoices("MYOPIA_RAY_ADDRESS", "RAY_ADDRESS"),
        description="a Ray cluster's job server (http://head:8265); default: start a local head on loopback",
    )
    job_python: str | None = Field(None, description="the jobs' interpreter on the cluster (default: python)")
    job_data_dir: str = Field(
        "/data",
        description="the data dir of jobs on a cluster (RAY_ADDRESS set): corpora, tokens, checkpoints, HF caches, "
        "on storage every node shares; never the control plane's own (jobs of an embedded head use data_dir)",
    )
    job_storage: str | None = Field(
        None,
        description="where jobs keep checkpoints (Ray Train storage_path): a shared folder or an object-store URI "
        "(s3://bucket/prefix); default: runs/ under the jobs' data dir",
    )
    mlflow_uri: str | None = Field(
        None,
        validation_alias=AliasChoices("MYOPIA_MLFLOW_URI", "MLFLOW_TRACKING_URI"),
        description="default: SQLite in the data dir, artifacts beside it",
    )
    version: str | None = Field(
        None,
        description="this image's code version (the images' build sets it); given to every job, whose image must "
        "carry the same, or the job fails at once naming both",
    )
    api_token: str | None = Field(None, description="bearer token required by the API when set")
    api_token_next: str | None = Field(
        None,
        description="a second token accepted beside api_token, for rotation: set it, move the clients to it, then "
        "make it api_token and unset this (docs/operations.md)",
    )
    migrate_on_start: bool = Field(
        True,
        description="upgrade the store's schema when the control plane starts; false: only `myopia db upgrade` does "
        "(run it once, before the new version's pods), and a store at another version keeps /readyz at 503",
    )
    resource_profile: str = Field("cpu", description="the profile of cluster/resources.yaml the planner uses")
    max_concurrent_runs: int = Field(2, ge=1)
    max_attempts: int = Field(3, ge=1, description="attempts per run before it is failed")
    retry_backoff_s: float = Field(10.0, ge=0.0, description="a failed run waits this, doubled per failure")
    allowed_data_roots: list[Path] = Field(
        default_factory=list,
        description="where a request may point runs at local corpora, datasets and checkpoints (JSON list, e.g. "
        '["/data", "/mnt/checkpoints"]); default: the data dir',
    )
    retention_days: float | None = Field(
        None,
        gt=0,
        description="delete ended sweeps (their rows, MLflow runs and checkpoints) this many days after their last "
        "change, hourly; default: keep everything",
    )
    max_request_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies are refused (413)")
    stall_timeout_s: float = Field(
        3600.0,
        ge=0.0,
        description="a placed run whose rank 0 reports no progress (a step, or the start of a long phase) for this "
        "long is failed and its slot freed; 0: never. Acts where the control plane reads the runs' progress (local "
        "or shared job storage); a run still waiting for its workers is queueing, not stalled",
    )
    max_schedules: int = Field(100, ge=1, description="live schedules at most (each can fire a sweep a minute)")

    @field_validator(
        "database_url",
        "ray_address",
        "mlflow_uri",
        "api_token",
        "api_token_next",
        "job_python",
        "job_storage",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        # `openssl rand -hex 32 > file` ends in a newline that Secrets and `$(cat file)` keep; clients drop it
        v = v.strip() if isinstance(v, str) else v
        return None if v == "" else v  # compose passes `${VAR:-}` through as an empty string

    @property
    def api_tokens(self) -> tuple[str, ...]:
        """Every token the API accepts (none: no auth)."""
        return tuple(t for t in (self.api_token, self.api_token_next) if t)

    @property
    def data_roots(self) -> list[Path]:
        if self.allowed_data_roots:
            return self.allowed_data_roots
        return [self.data_dir.expanduser(), *([Path(self.job_data_dir)] if self.ray_address else [])]

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.expanduser() / 'myopia.db'}"

    def job_env(self) -> dict[str, str]:
        """What every job is given: its data dir (the cluster's when RAY_ADDRESS is set, with the Hugging Face caches
        under it: one download for every node; else this machine's), and where checkpoints go."""
        if not self.ray_address:
            env = {"MYOPIA_DATA_DIR": str(self.data_dir.expanduser())}
        else:
            env = {"MYOPIA_DATA_DIR": self.job_data_dir, "HF_HOME": f"{self.job_data_dir.rstrip('/')}/hf"}
        if self.job_storage:
            env["MYOPIA_JOB_STORAGE"] = self.job_storage
        if self.version:
            env["MYOPIA_EXPECTED_VERSION"] = self.version  # trainers.job_protocol.version_problem
        return env

    @property
    def mlflow(self) -> str:
        return self.mlflow_uri or f"sqlite:///{self.data_dir.expanduser() / 'mlflow.db'}"
