"""The operator's walk, docs/operations.md and the README, checked against the files it names, so the doc cannot
drift from them: every `myopia` command parses with the real CLI, every Secret, key, Service, port, workload,
kustomization and file a command names exists, every MYOPIA_ variable is a setting, every REST path is served."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.unit.test_deployment import parses, settings_field
from tests.unit.test_kubernetes import KUBERAY, KUBERNETES, SECRETS_EXAMPLE, documents, of_kind

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "docs" / "operations.md", ROOT / "README.md"]


def commands() -> list[tuple[str, str]]:
    """(doc, command line) for every line of every fenced block, continuations joined, comments dropped."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```[a-z]*\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" # ", 1)[0].strip()
                if line and not line.startswith("#"):
                    found.append((doc.name, line))
    return found


def words(line: str) -> list[str]:
    return shlex.split(line.replace("&", " ").replace("$(", " ").replace(")", " "), comments=True)


def inline() -> list[tuple[str, str]]:
    """(doc, command) for every `myopia …` code span of the text that is one whole command line (no alternatives
    or optional parts written as `|` or `[…]`)."""
    spans = [(doc.name, m) for doc in DOCS for m in re.findall(r"`(myopia [^`]+)`", doc.read_text())]
    return [(d, m) for d, m in spans if not re.search(r"[|\[<]|…", m)]


MYOPIA = [(d, c) for d, c in commands() if c.startswith("myopia ") or " -- myopia " in c]
KUBECTL = [(d, c) for d, c in commands() if c.startswith("kubectl ")]


def test_the_walk_has_its_commands():
    assert len(MYOPIA) >= 5 and len(inline()) >= 10 and len(KUBECTL) >= 12


@pytest.mark.parametrize(("doc", "line"), MYOPIA, ids=[c for _, c in MYOPIA])
def test_every_myopia_command_parses(doc, line, tmp_path, monkeypatch):
    argv = words(line[line.find(" -- myopia ") + 4 if " -- myopia " in line else 0 :])
    monkeypatch.chdir(tmp_path)  # the request files it names, as the reader has made them
    for a in argv:
        if a.endswith((".yaml", ".json")):
            (tmp_path / a).write_text("{}")
    parses(["ID" if a == "sw-…" else a for a in argv])


@pytest.mark.parametrize(("doc", "span"), inline(), ids=[c for _, c in inline()])
def test_every_myopia_command_the_text_names_exists(doc, span):
    from api.cli import main

    command = main
    for name in span.split()[1:]:  # down the groups to the command the span names
        if name.startswith("-") or not hasattr(command, "commands"):
            break
        assert name in command.commands, f"{doc}: `{span}`: no command {name!r}"
        command = command.commands[name]


def test_every_kubectl_command_names_what_the_manifests_make():
    secrets = {s["metadata"]["name"]: s["stringData"] for s in documents([SECRETS_EXAMPLE])}
    services = {s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]} for s in of_kind("Service")}
    workloads = {f"{kind}/{d['metadata']['name']}" for kind, k in (("deploy", "Deployment"), ("statefulset",
                 "StatefulSet")) for d in of_kind(k)}  # fmt: skip
    clusters = {d["metadata"]["name"] for d in of_kind("RayCluster")}
    for _doc, line in KUBECTL:
        argv = words(line)
        if "-n" in argv:
            assert argv[argv.index("-n") + 1] == "myopia", line
        if argv[1:4] == ["-n", "myopia", "create"] and "generic" in argv:
            name = argv[argv.index("generic") + 1]
            keys = [a.split("=", 2)[1] for a in argv if a.startswith("--from-file=")]
            assert name in secrets and set(keys) <= secrets[name].keys(), line
        for a in argv:
            if a.startswith(("svc/", "deploy/", "statefulset/", "raycluster/")):
                kind, name = a.split("/", 1)
                if kind == "svc":
                    port = next(x for x in argv if re.fullmatch(r"\d+:\d+", x)).split(":")[1]
                    assert int(port) in services[name], line
                elif kind == "raycluster":
                    assert name in clusters, line
                else:
                    assert a in workloads, line
        if "-k" in argv:
            assert (ROOT / argv[argv.index("-k") + 1] / "kustomization.yaml").exists(), line
        if "-f" in argv:
            assert (ROOT / argv[argv.index("-f") + 1]).exists(), line
        if "secret" in argv and "jsonpath" in line:  # the token a client reads back
            name = argv[argv.index("secret") + 1]
            key = re.search(r"\{\.data\.([\w-]+)\}", line).group(1)
            assert key in secrets[name], line


def test_the_registry_is_set_where_the_kustomizations_name_it():
    for _doc, line in commands():
        if "kustomize edit set image" in line:
            name = re.search(r"set image ([\w./-]+)=", line).group(1)
            folder = re.search(r"cd ([\w/]+)", line).group(1)
            images = yaml.safe_load((ROOT / folder / "kustomization.yaml").read_text())["images"]
            assert name in {i["name"] for i in images} and folder in ("cluster/kubernetes", "cluster/kuberay"), line
    assert KUBERNETES.is_dir() and KUBERAY.is_dir()


def test_every_variable_the_docs_name_is_a_setting():
    for doc in DOCS:
        compose = (ROOT / "docker-compose.yml").read_text()
        for name in set(re.findall(r"\bMYOPIA_[A-Z_]+\b", doc.read_text())):
            if name == "MYOPIA_EXPECTED_VERSION" or f"${{{name}" in compose:  # given to jobs; compose's own
                continue
            assert settings_field(name) or name == "MYOPIA_API_URL", f"{doc.name}: {name} is no setting"


def test_every_rest_path_the_docs_use_is_served():
    from api.app import create_app

    paths = create_app().openapi()["paths"]
    templates = [re.compile("^" + re.sub(r"\{\w+\}", r"[^/]+", p) + "$") for p in paths]
    for doc in DOCS:
        for method, path in re.findall(r"\b(GET|POST|PATCH|DELETE) (/v1/[\w/{}.-]+)", doc.read_text()):
            assert any(t.match(path) for t in templates), f"{doc.name}: {method} {path}"
        for path in re.findall(r"https?://127\.0\.0\.1:8000(/v1/[\w/{}.'\[\]-]+)", doc.read_text()):
            path = re.sub(r"\{[^}]*\}", "x", path.split("'")[0])
            assert any(t.match(path) for t in templates), f"{doc.name}: {path}"
