"""The deployment files, checked offline (no Docker engine or Kubernetes here): against their published schemas
(compose-spec; Kubernetes via kubernetes-validate; Ray's own cluster-launcher schema) and against the code: every
setting a service is given exists, every command an image or manifest runs parses with the real CLI."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import compose_spec
import pytest
import yaml

from services.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "cluster" / "docker").glob("*.Dockerfile"))


def compose() -> dict:
    spec = compose_spec.PyOptions(apply_merge=True).from_yaml((ROOT / "docker-compose.yml").read_text())
    spec.validate()  # the compose specification's schema
    return spec.to_dict()


def defaults(text: str) -> str:
    """Compose's `${VAR:-default}` with its default, as a shell with nothing set would expand it."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def cli_for(program: str) -> click.Command:
    if program == "myopia":
        from api.cli import main

        return main
    if program == "ray":
        from ray.scripts.scripts import cli

        return cli
    if program == "mlflow":
        from mlflow.cli import cli

        return cli
    raise AssertionError(f"no known program {program!r}")


def parses(argv: list[str]) -> None:
    """Parse argv with the program's own click command, down to the leaf subcommand, without running it."""
    cmd, args, parent = cli_for(argv[0]), [defaults(a) for a in argv[1:]], None
    name = argv[0]
    while True:
        ctx = cmd.make_context(name, list(args), parent=parent, resilient_parsing=False)
        if not isinstance(cmd, click.Group):
            return
        name, cmd, args = cmd.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        parent = ctx


def settings_field(env_name: str) -> bool:
    for name, field in Settings.model_fields.items():
        aliases = getattr(field.validation_alias, "choices", None) or [f"MYOPIA_{name.upper()}"]
        if env_name in aliases:
            return True
    return False


def test_compose_validates_and_has_the_stack():
    services = compose()["services"]
    assert {"postgres", "mlflow", "ray-head", "ray-worker", "api"} <= services.keys()
    worker = services["ray-worker"]
    assert "container_name" not in worker and not worker.get("ports")  # `--scale ray-worker=N` needs both absent
    for name in ("postgres", "mlflow", "ray-head", "api"):
        assert services[name].get("healthcheck"), f"{name} has no healthcheck"
    api_deps = services["api"]["depends_on"]
    assert {k: v["condition"] for k, v in api_deps.items()} == {
        "postgres": "service_healthy",
        "mlflow": "service_healthy",
        "ray-head": "service_healthy",
    }
    mounts = {name: dict(v.split(":")[1::-1] for v in s.get("volumes", [])) for name, s in services.items()}
    assert mounts["ray-head"]["/data"] == mounts["ray-worker"]["/data"] == mounts["api"]["/data"]  # one storage


def test_compose_commands_and_healthchecks_run_real_programs():
    for name, service in compose()["services"].items():
        if service.get("image", "").startswith("myopia:"):
            parses(service["command"] if isinstance(service["command"], list) else shlex.split(service["command"]))
        test = service.get("healthcheck", {}).get("test", [])
        if test[1:2] == ["python"]:
            compile(test[3], f"{name} healthcheck", "exec")


def test_compose_environment_is_what_the_code_reads():
    services = compose()["services"]
    for name, service in services.items():
        for key in service.get("environment", {}):
            if key.startswith("MYOPIA_") and key not in ("MYOPIA_DB_PASSWORD",):
                assert settings_field(key), f"{name}: {key} is not a setting (services/settings.py)"
    api_env = dict(services["api"]["environment"])
    # the API listens beyond loopback in the stack: compose refuses to start it without a token
    assert str(api_env.pop("MYOPIA_API_TOKEN")).startswith("${MYOPIA_API_TOKEN:?")
    env = {k: defaults(str(v)) for k, v in api_env.items()}
    s = Settings.model_validate({}, context=None) if not env else _settings_from(env)
    assert s.database.startswith("postgresql+psycopg2://") and s.database.endswith("@postgres:5432/myopia")
    assert s.ray_address == "http://ray-head:8265" and s.mlflow == "http://mlflow:5000"
    mlflow = " ".join(services["mlflow"]["command"])
    assert "@postgres:5432/mlflow" in defaults(mlflow) and "--workers=1" in mlflow
    init = (ROOT / "cluster/compose/postgres-init.sql").read_text()
    assert "CREATE DATABASE mlflow" in init


def _settings_from(env: dict[str, str]) -> Settings:
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, env, clear=True):
        return Settings()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_pinned_and_run_as_a_user(dockerfile):
    text = dockerfile.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    assert "torch==2.13.0" in text and "-r requirements.lock" in text and "--no-deps -e ." in text
    for src in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)\s+\S+$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"{dockerfile.name} copies {path}, which does not exist"
    (cmd,) = re.findall(r"^CMD\s+(\[.*\])", text, re.M)
    parses(json.loads(cmd))


def test_images_contain_what_the_services_need():
    assert (ROOT / "requirements.lock").read_text().lower().count("psycopg2-binary==") == 1  # the PostgreSQL URLs


def test_cluster_launcher_config_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster" / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))  # as `ray up` does: the provider's defaults filled in, then the schema
    gpu = config["available_node_types"]["gpu-8x80gb"]
    assert gpu["node_config"]["InstanceType"] == "p4de.24xlarge" and gpu["max_workers"] >= 1
    assert any("/data" in opt for opt in config["docker"]["run_options"])  # the shared storage
