"""The Kubernetes deployment (cluster/kubernetes/, cluster/kuberay/), checked offline: every document against its
schema, strictly (Kubernetes kinds with kubernetes-validate, KubeRay kinds with the vendored CRDs' openAPIV3Schema
made to reject unknown fields); every pod against the Pod Security "restricted" standard the namespace enforces;
secrets only by reference; commands and settings against the code; NetworkPolicies, Services, Secrets, ConfigMaps
and claims against the objects they name; the Ray log shipper by running it."""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.unit.test_deployment import parses, settings_field

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "kuberay"
KUBERNETES = ROOT / "cluster" / "kubernetes"
KUSTOMIZATION = KUBERNETES / "kustomization.yaml"
SECRETS_EXAMPLE = KUBERNETES / "secrets.example.yaml"
MANIFESTS = sorted(p for folder in (KUBERAY, KUBERNETES) for p in folder.glob("*.yaml") if p.name != KUSTOMIZATION.name)
CRDS = {"RayCluster": KUBERAY / "crds" / "ray.io_rayclusters.yaml", "RayJob": KUBERAY / "crds" / "ray.io_rayjobs.yaml"}
K8S_VERSION = "1.30.0"
NAMESPACE = "myopia"
RAY_TOKEN_KEY = "auth_token"  # KubeRay: utils.RAY_AUTH_TOKEN_SECRET_KEY
RAY_TOKEN_SECRET = "myopia-ray-token"
RAY_ENV = {
    "MYOPIA_DATA_DIR": "/data",
    "HF_HOME": "/data/hf",
    "TORCH_EXTENSIONS_DIR": "/data/torch_extensions",
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "RAY_USAGE_STATS_ENABLED": "0",
}
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|CREDENTIAL|DATABASE_URL|BACKEND_STORE_URI|ACCESS_KEY", re.I)
SECRET_VALUE = re.compile(r"://[^/\s:@]+:[^/\s@]+@|password\s*[=:]|token\s*[=:]|--password|--token|REPLACE-WITH", re.I)


def load(path: Path) -> list[dict]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [d for d in yaml.load_all(path.read_text(), Loader=loader) if d is not None]


def documents(paths=MANIFESTS) -> list[dict]:
    return [doc for path in paths for doc in load(path)]


def of_kind(kind: str) -> list[dict]:
    return [d for d in documents() if d["kind"] == kind]


def ray_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


# --- strict CRD validation ---------------------------------------------------------------------------------------


def strict(schema: dict) -> dict:
    """The schema, rejecting unknown fields: `additionalProperties: false` on every object schema listing its
    `properties`, unless it keeps unknown fields (x-kubernetes-preserve-unknown-fields), as the API server prunes."""
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema.setdefault("additionalProperties", False)
    for sub in schema.get("properties", {}).values():
        strict(sub)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key, []):
            strict(sub)
    return schema


@functools.cache
def crd_validator(kind: str, version: str) -> jsonschema.Validator:
    (crd,) = load(CRDS[kind])
    assert crd["spec"]["group"] == "ray.io" and crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema = strict(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def crd_errors(doc: dict) -> list[str]:
    validator = crd_validator(doc["kind"], doc["apiVersion"].removeprefix("ray.io/"))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


# --- pods, as they will run ---------------------------------------------------------------------------------------


@dataclass
class Pod:
    where: str
    labels: dict[str, str]
    template: dict  # metadata + spec
    injected: list[dict] = field(default_factory=list)  # containers KubeRay adds (the autoscaler, wait-gcs-ready)
    group: dict | None = None  # a Ray group spec
    claim_templates: set[str] = field(default_factory=set)  # a StatefulSet's volumeClaimTemplates

    @property
    def spec(self) -> dict:
        return self.template["spec"]

    def containers(self) -> list[dict]:
        s = self.spec
        return [*s.get("initContainers", []), *s["containers"], *s.get("ephemeralContainers", []), *self.injected]


def kuberay_labels(cluster: str, node_type: str, group: str, template_labels: dict) -> dict:
    """The labels KubeRay gives a Ray pod (ray-operator/controllers/ray/common/pod.go, labelPod)."""
    labels = {
        "ray.io/is-ray-node": "yes",
        "ray.io/cluster": cluster,
        "ray.io/node-type": node_type,
        "ray.io/group": group,
        "ray.io/identifier": f"{cluster}-{node_type}",
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }
    fixed = {"ray.io/node-type", "ray.io/group", "ray.io/cluster"}
    return labels | {k: v for k, v in template_labels.items() if k not in fixed}


def pods() -> list[Pod]:
    found = []
    for doc in documents():
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            t = doc["spec"]["template"]
            claims = {c["metadata"]["name"] for c in doc["spec"].get("volumeClaimTemplates", [])}
            found.append(Pod(name, t["metadata"].get("labels", {}), t, claim_templates=claims))
        elif doc["apiVersion"].startswith("ray.io/"):
            spec = ray_spec(doc)
            # a RayJob's cluster is named after the job plus a random suffix
            cluster = doc["metadata"]["name"] + ("-xxxxx" if doc["kind"] == "RayJob" else "")
            for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
                head = group is spec["headGroupSpec"]
                t = group["template"]
                labels = kuberay_labels(
                    cluster,
                    "head" if head else "worker",
                    "headgroup" if head else group["groupName"],
                    t.get("metadata", {}).get("labels", {}),
                )
                ray = t["spec"]["containers"][0]
                injected = [{"name": "wait-gcs-ready", "securityContext": ray.get("securityContext", {})}]
                if head and spec.get("enableInTreeAutoscaling"):
                    sc = spec.get("autoscalerOptions", {}).get("securityContext", {})
                    injected.append({"name": "autoscaler", "securityContext": sc})
                where = f"{name}/{'head' if head else group['groupName']}"
                found.append(Pod(where, labels, t, injected, group))
    return found


def ray_pods() -> list[Pod]:
    return [p for p in pods() if p.group is not None]


def env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def scrape(port: int) -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/path": "/metrics", "prometheus.io/port": str(port)}


# --- Pod Security "restricted" ------------------------------------------------------------------------------------

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim"}
RESTRICTED_VOLUMES |= {"projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start"}
SAFE_SYSCTLS |= {"net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports"}


def restricted_violations(spec: dict, injected: list[dict] = ()) -> list[str]:
    """What in a pod spec the Pod Security "restricted" standard refuses (latest version of the standard)."""
    bad = []
    sc = spec.get("securityContext", {})
    if sc.get("runAsNonRoot") is not True:
        bad.append("pod: runAsNonRoot must be true")
    if not sc.get("runAsUser"):
        bad.append("pod: runAsUser must be set, and not 0")
    if sc.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        bad.append("pod: seccompProfile must be RuntimeDefault")
    if sc.get("seLinuxOptions", {}).get("user") or sc.get("seLinuxOptions", {}).get("role"):
        bad.append("pod: seLinuxOptions user/role")
    bad += [f"pod: sysctl {s['name']}" for s in sc.get("sysctls", []) if s["name"] not in SAFE_SYSCTLS]
    bad += [f"pod: {k}" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k) is True]
    for volume in spec.get("volumes", []):
        if kinds := set(volume) - {"name"} - RESTRICTED_VOLUMES:
            bad.append(f"volume {volume['name']}: {', '.join(sorted(kinds))}")
    for c in [*spec.get("initContainers", []), *spec["containers"], *spec.get("ephemeralContainers", []), *injected]:
        csc, name = c.get("securityContext") or {}, f"container {c['name']}"
        if csc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation must be false")
        if "ALL" not in csc.get("capabilities", {}).get("drop", []):
            bad.append(f"{name}: capabilities must drop ALL")
        if set(csc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities")
        if csc.get("privileged"):
            bad.append(f"{name}: privileged")
        if csc.get("runAsNonRoot") is False or csc.get("runAsUser") == 0:
            bad.append(f"{name}: runs as root")
        if csc.get("seccompProfile", {}).get("type", "RuntimeDefault") not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile")
        if csc.get("procMount", "Default") != "Default":
            bad.append(f"{name}: procMount")
        bad += [f"{name}: hostPort {p['hostPort']}" for p in c.get("ports", []) if p.get("hostPort")]
    return bad


# --- the tests ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_manifests_validate_strictly(manifest):
    for doc in load(manifest):
        if doc["apiVersion"].startswith("ray.io/"):
            assert not (errors := crd_errors(doc)), "\n".join(errors[:10])
            meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}  # the CRD leaves it open
            kubernetes_validate.validate(meta, K8S_VERSION, strict=True)
            spec = ray_spec(doc)
            for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
                t = group["template"]
                pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", **t.get("metadata", {})}}
                kubernetes_validate.validate({**pod, "spec": t["spec"]}, K8S_VERSION, strict=True)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']}/{doc['metadata']['name']}"


def test_strict_crd_validation_rejects_unknown_fields():
    (cluster,) = load(KUBERAY / "raycluster.yaml")
    assert crd_errors(cluster) == []
    typo = copy.deepcopy(cluster)
    typo["spec"]["headGroupSpec"]["rayStartParam"] = typo["spec"]["headGroupSpec"].pop("rayStartParams")
    assert any("rayStartParam" in e for e in crd_errors(typo))
    nested = copy.deepcopy(cluster)  # deep in the embedded pod template
    nested["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    assert any("securityContxt" in e for e in crd_errors(nested))
    wrong = copy.deepcopy(cluster)
    wrong["spec"]["authOptions"]["mode"] = "tokens"
    assert crd_errors(wrong)
    (job,) = load(KUBERAY / "rayjob.yaml")
    job["spec"]["rayClusterSpec"]["authOption"] = job["spec"]["rayClusterSpec"].pop("authOptions")
    assert any("authOption" in e for e in crd_errors(job))


def test_crds_are_upstreams_and_define_token_auth():
    readme = (KUBERAY / "crds" / "README.md").read_text()
    assert re.search(r"v1\.(5|6|7|[89]|\d\d)\.\d+", readme), "the README names the KubeRay release"
    for kind, path in CRDS.items():
        data = path.read_bytes()
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's object id
        assert blob in readme, f"{path.name} differs from the upstream blob the README records"
        (crd,) = load(path)
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        spec = v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        spec = spec["rayClusterSpec"]["properties"] if kind == "RayJob" else spec
        assert spec["authOptions"]["properties"]["mode"]["enum"] == ["disabled", "token"]


@pytest.mark.parametrize("pod", pods(), ids=lambda p: p.where)
def test_every_pod_is_restricted(pod):
    assert restricted_violations(pod.spec, pod.injected) == []
    if any(c.get("image", "").startswith("ghcr.io/your-org/myopia:") for c in pod.containers()):
        sc = pod.spec["securityContext"]  # the images' user, owner of what they write on /data
        assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (1000, 1000, 1000)


def test_restricted_check_refuses_what_the_standard_refuses():
    good = ray_pods()[0].spec
    assert restricted_violations(good) == []
    cases = {
        "privileged": lambda s: s["containers"][0]["securityContext"].update(privileged=True),
        "hostPath": lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "drop ALL": lambda s: s["containers"][0].update(securityContext={"allowPrivilegeEscalation": False}),
        "allowPrivilegeEscalation": lambda s: s["initContainers"][0].update(securityContext={}),
        "runAsNonRoot": lambda s: s["securityContext"].pop("runAsNonRoot"),
        "seccompProfile": lambda s: s["securityContext"].pop("seccompProfile"),
        "hostNetwork": lambda s: s.update(hostNetwork=True),
        "hostPort": lambda s: s["containers"][0]["ports"].append({"containerPort": 1, "hostPort": 1}),
        "adds capabilities": lambda s: s["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
    }
    for what, break_it in cases.items():
        spec = copy.deepcopy(good)
        break_it(spec)
        assert restricted_violations(spec), what
    assert restricted_violations(good, [{"name": "autoscaler", "securityContext": {}}])


def test_namespace_enforces_restricted():
    (ns,) = of_kind("Namespace")
    assert ns["metadata"]["name"] == NAMESPACE
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_ray_token_auth_dashboard_and_version():
    import ray

    docs = of_kind("RayCluster") + of_kind("RayJob")
    assert {d["kind"] for d in docs} == {"RayCluster", "RayJob"}
    for doc in docs:
        spec = ray_spec(doc)
        assert spec.get("authOptions", {}).get("mode") == "token", doc["metadata"]["name"]
        assert spec["authOptions"]["secretName"] == RAY_TOKEN_SECRET  # the operator's: kept when a cluster is remade
        # KubeRay's default dashboard-host is 0.0.0.0: the dashboard and job server leave the pod, behind the token
        assert spec["headGroupSpec"]["rayStartParams"].get("dashboard-host", "0.0.0.0") == "0.0.0.0"
        assert spec["rayVersion"] == ray.__version__
        assert tuple(map(int, spec["rayVersion"].split(".")[:2])) >= (2, 52)  # KubeRay's minimum for token auth
    (job,) = of_kind("RayJob")
    parses(shlex.split(job["spec"]["entrypoint"]))
    assert job["spec"].get("submissionMode") == "HTTPMode"  # no submitter pod, which would not be restricted
    for key in yaml.safe_load(job["spec"].get("runtimeEnvYAML", "{}")).get("env_vars", {}):
        assert not key.startswith("MYOPIA_") or settings_field(key), key


@pytest.mark.parametrize("pod", ray_pods(), ids=lambda p: p.where)
def test_ray_pods(pod):
    spec, group = pod.spec, pod.group
    head = pod.labels["ray.io/node-type"] == "head"
    ray = spec["containers"][0]  # KubeRay configures containers[0] as the Ray container
    assert ray["name"].startswith("ray-")
    for c in spec["containers"]:
        assert {k: e.get("value") for k, e in env(c).items() if k in RAY_ENV} == RAY_ENV, c["name"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in ray["volumeMounts"]}
    assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == "myopia-shared"
    assert "emptyDir" in volumes[mounts["/tmp/ray"]] and mounts["/tmp/ray"] == "ray-logs"  # KubeRay's name for it
    # Prometheus: Ray's metrics on 8080, declared and annotated
    assert group["rayStartParams"]["metrics-export-port"] == "8080"
    assert {"name": "metrics", "containerPort": 8080} in ray["ports"]
    assert pod.template["metadata"]["annotations"] == scrape(8080)
    # logs: the native sidecar copies /tmp/ray (shared with Ray) to /data/logs/<pod name>
    (shipper,) = [c for c in spec.get("initContainers", []) if c["name"] == "log-shipper"]
    assert shipper["restartPolicy"] == "Always"
    assert env(shipper)["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    shipper_mounts = {m["mountPath"]: m for m in shipper["volumeMounts"]}
    for path in ("/tmp/ray", "/data"):  # the same volumes as Ray's
        assert shipper_mounts[path]["name"] == mounts[path]
    script = Path(shipper["command"][-1])
    assert shipper["command"][0] == "python" and script.name in log_shipper_configmap()["data"]
    assert volumes[shipper_mounts[str(script.parent)]["name"]]["configMap"]["name"] == "ray-log-shipper"
    # placement: GPU workers on GPU nodes, the head off them
    gpus = int(ray["resources"]["limits"].get("nvidia.com/gpu", 0))
    if gpus:
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    if head:
        assert gpus == 0 and not spec.get("tolerations")
        required = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        (term,) = required["nodeSelectorTerms"]
        assert {"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]} in term["matchExpressions"]
    else:
        assert group["groupName"] == "gpu-8x80gb" and gpus == 8


def test_the_raycluster_scales_8x80gb_workers():
    (cluster,) = of_kind("RayCluster")
    (group,) = cluster["spec"]["workerGroupSpecs"]
    assert (group["groupName"], group["minReplicas"], group["maxReplicas"]) == ("gpu-8x80gb", 0, 8)
    assert cluster["spec"]["enableInTreeAutoscaling"] is True


def test_settings_and_secrets():
    examples = {s["metadata"]["name"]: s for s in documents([SECRETS_EXAMPLE])}
    for pod in pods():
        for c in pod.containers():
            for name, e in env(c).items():
                assert not name.startswith("MYOPIA_") or settings_field(name), f"{pod.where}: {name} is no setting"
                if SECRET_NAME.search(name):
                    assert "secretKeyRef" in e.get("valueFrom", {}), f"{pod.where}: {name} not from a Secret"
                assert not SECRET_VALUE.search(str(e.get("value", ""))), f"{pod.where}: {name} holds a secret"
                if ref := e.get("valueFrom", {}).get("secretKeyRef"):  # every Secret the operator's, shaped there
                    assert ref["key"] in examples[ref["name"]]["stringData"], f"{pod.where}: {ref}"
            for arg in [*c.get("command", []), *c.get("args", [])]:
                assert not SECRET_VALUE.search(arg), f"{pod.where}: a secret in {c['name']}'s command line"
    for doc in documents():
        if doc["kind"] == "RayJob":
            assert not SECRET_VALUE.search(doc["spec"]["entrypoint"] + doc["spec"].get("runtimeEnvYAML", ""))


def test_api_deployment():
    (api,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "myopia-api"]
    assert api["spec"]["replicas"] == 1 and api["spec"]["strategy"] == {"type": "Recreate"}
    t = api["spec"]["template"]
    (c,) = t["spec"]["containers"]
    assert c["image"] == "ghcr.io/your-org/myopia:cpu"
    assert c["command"] == ["myopia", "serve", "--host", "0.0.0.0", "--port", "8000"]
    parses(c["command"])
    e = env(c)
    values = {k: v["value"] for k, v in e.items() if "value" in v}
    (cluster,) = of_kind("RayCluster")
    assert values == {
        "RAY_ADDRESS": f"http://{cluster['metadata']['name']}-head-svc:8265",  # KubeRay's head service
        "MYOPIA_RESOURCE_PROFILE": "gpu",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MYOPIA_JOB_DATA_DIR": "/data",
        "MYOPIA_DATA_DIR": "/data",
        "RAY_AUTH_MODE": "token",
    }
    refs = {k: v["valueFrom"]["secretKeyRef"] for k, v in e.items() if "secretKeyRef" in v.get("valueFrom", {})}
    assert refs.keys() == {"MYOPIA_DATABASE_URL", "MYOPIA_API_TOKEN", "MYOPIA_API_TOKEN_NEXT", "RAY_AUTH_TOKEN"}
    assert refs["RAY_AUTH_TOKEN"] == {"name": ray_spec(cluster)["authOptions"]["secretName"], "key": RAY_TOKEN_KEY}
    assert refs["MYOPIA_API_TOKEN_NEXT"]["optional"] is True  # set only during a rotation
    assert yaml.safe_load((ROOT / "cluster" / "resources.yaml").read_text()).get(values["MYOPIA_RESOURCE_PROFILE"])
    port = {p["name"]: p["containerPort"] for p in c["ports"]}[c["readinessProbe"]["httpGet"]["port"]]
    assert port == 8000 and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert not t["metadata"].get("annotations")  # a scrape by annotation cannot send the bearer token
    # the settings the process will see, the Secrets' values as secrets.example.yaml shapes them
    secrets = {s["metadata"]["name"]: s["stringData"] for s in documents([SECRETS_EXAMPLE])}
    env_vars = values | {k: secrets.get(r["name"], {}).get(r["key"], "t") for k, r in refs.items()}
    from services.settings import Settings

    with mock.patch.dict(os.environ, env_vars, clear=True):
        s = Settings()
    assert s.database.startswith("postgresql+psycopg2://") and s.database.endswith("@postgres:5432/myopia")
    assert (s.ray_address, s.mlflow, s.resource_profile) == (values["RAY_ADDRESS"], "http://mlflow:5000", "gpu")
    assert str(s.data_dir) == s.job_data_dir == "/data"  # the claim, where the Ray pods mount it too


def test_mlflow_server_takes_its_options_from_the_environment():
    from mlflow.cli import cli
    from mlflow.server.security_utils import is_allowed_host_header

    (deployment,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "mlflow"]
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["mlflow", "server"] and not c.get("args")
    server = cli.commands["server"]
    envvars = {p.envvar: p.name for p in server.params if p.envvar}
    e = env(c)
    assert {k for k in e if k.startswith("MLFLOW_")} <= envvars.keys(), "an MLFLOW_ variable `mlflow server` ignores"
    ref = e["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "mlflow-backend", "key": "backend-store-uri"}
    secrets = {s["metadata"]["name"]: s["stringData"] for s in documents([SECRETS_EXAMPLE])}
    backend = secrets["mlflow-backend"]["backend-store-uri"]
    assert backend.startswith("postgresql+psycopg2://") and backend.endswith("@postgres:5432/mlflow")
    values = {k: v.get("value", backend) for k, v in e.items()}
    with mock.patch.dict(os.environ, values, clear=True):
        params = server.make_context("server", []).params
    assert params["backend_store_uri"] == backend and params["serve_artifacts"] is True
    assert (params["host"], params["port"]) == ("0.0.0.0", 5000)
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert params["artifacts_destination"] in mounts or params["artifacts_destination"].startswith("s3://")
    allowed = [h.strip() for h in params["allowed_hosts"].split(",")]
    uris = {env(x).get("MLFLOW_TRACKING_URI", {}).get("value") for p in pods() for x in p.containers()} - {None}
    assert uris
    for uri in uris:
        host = uri.split("://", 1)[1].rstrip("/")
        assert is_allowed_host_header(allowed, host), f"mlflow would refuse the Host header {host}"
    (service,) = [s for s in of_kind("Service") if s["metadata"]["name"] == "mlflow"]
    assert service["spec"]["ports"][0]["port"] == 5000
    path = c["readinessProbe"]["httpGet"]["path"]
    assert path == "/health"


def test_postgres_makes_both_databases():
    (sts,) = of_kind("StatefulSet")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    e = env(c)
    assert "POSTGRES_USER" not in e  # the superuser is `postgres`, the operator's; each service has its own role
    for var, key in (("POSTGRES_PASSWORD", "password"), ("STORE_ROLE_PASSWORD", "myopia-password"),
                     ("MLFLOW_ROLE_PASSWORD", "mlflow-password")):  # fmt: skip
        assert e[var]["valueFrom"]["secretKeyRef"] == {"name": "postgres-credentials", "key": key}
    init_mount = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    (init_volume,) = [n for n, p in init_mount.items() if p == "/docker-entrypoint-initdb.d"]
    (cm,) = [m for m in of_kind("ConfigMap") if m["metadata"]["name"] == volumes[init_volume]["configMap"]["name"]]
    assert list(cm["data"].values()) == [(ROOT / "cluster" / "compose" / "postgres-init.sh").read_text()]
    assert volumes[init_volume]["configMap"]["defaultMode"] == 0o555  # executed in its own shell, not sourced
    secrets = {s["metadata"]["name"]: s["stringData"] for s in documents([SECRETS_EXAMPLE])}
    assert secrets["myopia-api"]["database-url"].startswith("postgresql+psycopg2://myopia:")
    assert secrets["mlflow-backend"]["backend-store-uri"].startswith("postgresql+psycopg2://mlflow:")
    assert e["PGDATA"]["value"].startswith(init_mount["data"] + "/")  # a subdirectory initdb can own
    assert sts["spec"]["serviceName"] in {s["metadata"]["name"] for s in of_kind("Service")}


def test_references_resolve():
    """Every Service, volume, claim, ConfigMap and port a manifest names exists."""
    configmaps = {m["metadata"]["name"]: m["data"] for m in of_kind("ConfigMap")}
    claims = {c["metadata"]["name"] for c in of_kind("PersistentVolumeClaim")}
    for pod in pods():
        spec = pod.spec
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes.keys() | pod.claim_templates, f"{pod.where}: no volume {m['name']}"
            ports = {p.get("name") for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                assert not isinstance(port, str) or port in ports, f"{pod.where}: {probe} port {port}"
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, f"{pod.where}: {v}"
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps, f"{pod.where}: {v}"
    for service in of_kind("Service"):
        (pod,) = [p for p in pods() if service["spec"]["selector"].items() <= p.labels.items()]
        ports = {p["name"]: p["containerPort"] for c in pod.spec["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports and ports[port["targetPort"]] == port["port"], service["metadata"]


def allowed(source: dict[str, str], pod: Pod, port: int, source_namespace: str = NAMESPACE) -> bool:
    """Whether the NetworkPolicies let a pod with labels `source` connect to `pod` on `port` (TCP)."""
    policies = of_kind("NetworkPolicy")
    selecting = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= pod.labels.items()]
    if not selecting:
        return True
    ns_labels = {"kubernetes.io/metadata.name": source_namespace}
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if ports and port not in ports:
                continue
            for peer in rule.get("from", [{}]):
                ns_ok = (
                    peer["namespaceSelector"].get("matchLabels", {}).items() <= ns_labels.items()
                    if "namespaceSelector" in peer
                    else source_namespace == NAMESPACE
                )
                pod_ok = peer.get("podSelector", {}).get("matchLabels", {}).items() <= source.items()
                if ns_ok and pod_ok:
                    return True
    return False


def test_network_policies():
    every = pods()
    for policy in of_kind("NetworkPolicy"):
        name = policy["metadata"]["name"]
        selector = policy["spec"]["podSelector"]
        assert set(selector) == {"matchLabels"}, f"{name}: only matchLabels are checked here"
        selected = [p for p in every if selector["matchLabels"].items() <= p.labels.items()]
        assert selected, f"{name} selects no pod"
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for rule in policy["spec"]["ingress"]:
            for peer in rule.get("from", []):
                if "podSelector" in peer:
                    assert set(peer["podSelector"]) == {"matchLabels"}
                    labels = peer["podSelector"]["matchLabels"].items()
                    assert any(labels <= p.labels.items() for p in every), f"{name}: {peer} matches no pod"
            for port in rule.get("ports", []):
                for p in selected:
                    declared = {x["containerPort"] for c in p.spec["containers"] for x in c.get("ports", [])}
                    assert port["port"] in declared, f"{name}: {p.where} declares no port {port['port']}"

    def one(where: str) -> Pod:
        (p,) = [p for p in every if p.where == where]
        return p

    api, mlflow, postgres = one("Deployment/myopia-api"), one("Deployment/mlflow"), one("StatefulSet/postgres")
    head, worker = one("RayCluster/myopia/head"), one("RayCluster/myopia/gpu-8x80gb")
    job_head = one("RayJob/myopia-pythia-410m-myopic/head")
    assert not allowed(api.labels, head, 6379) and not allowed(api.labels, head, 10001)  # the API needs HTTP only
    for port in (6379, 8265, 10001):
        assert allowed(worker.labels, head, port) and (port != 8265 or allowed(api.labels, head, port))
        assert not allowed(mlflow.labels, head, port) and not allowed(job_head.labels, head, port)
        assert not allowed({}, head, port, "default")
    assert allowed(head.labels, worker, 12345) and not allowed(api.labels, worker, 12345)
    assert allowed({}, head, 8080, "monitoring") and allowed({}, worker, 8080, "monitoring")
    assert allowed(api.labels, postgres, 5432) and allowed(mlflow.labels, postgres, 5432)
    assert not allowed(head.labels, postgres, 5432) and not allowed(worker.labels, postgres, 5432)
    for ray in (head, worker, job_head):
        assert allowed(ray.labels, mlflow, 5000)
    assert allowed(api.labels, mlflow, 5000) and not allowed(postgres.labels, mlflow, 5000)
    assert not allowed({}, mlflow, 5000, "default")
    for namespace in ("ingress-nginx", "monitoring"):  # the API: its Ingress controller and Prometheus, no one else
        assert allowed({}, api, 8000, namespace)
    assert not allowed({}, api, 8000, "default") and not allowed(head.labels, api, 8000)


def test_kustomization_lists_the_files():
    k = yaml.safe_load(KUSTOMIZATION.read_text())
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    assert set(k) <= {"apiVersion", "kind", "namespace", "resources", "images"} and k["namespace"] == NAMESPACE
    raycluster = yaml.safe_load((KUBERAY / KUSTOMIZATION.name).read_text())
    assert raycluster["resources"] == ["raycluster.yaml"] and raycluster["images"] == k["images"]
    images = {c["image"].rsplit(":", 1)[0] for p in pods() for c in p.containers() if "myopia:" in c.get("image", "")}
    assert images == {i["name"] for i in k["images"]}  # one name to rewrite, in every manifest
    files = {p.name for p in KUBERNETES.iterdir()} - {KUSTOMIZATION.name, SECRETS_EXAMPLE.name}
    assert len(k["resources"]) == len(set(k["resources"])) and set(k["resources"]) == files
    assert k["resources"][0] == "namespace.yaml"
    kinds = [d["kind"] for r in k["resources"] for d in load(KUBERNETES / r)]
    workloads = [i for i, kind in enumerate(kinds) if kind in ("Deployment", "StatefulSet")]
    assert kinds.index("NetworkPolicy") > max(workloads) and kinds.index("PersistentVolumeClaim") < min(workloads)


@pytest.mark.skipif(not shutil.which("kubectl"), reason="no kubectl")
def test_kubectl_reads_the_manifests_as_these_tests_do(tmp_path):
    """`kubectl kustomize` (offline) builds the kustomization, and Go's YAML reads the KubeRay manifests' anchors
    as PyYAML does."""

    def build(directory: Path) -> list[dict]:
        out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return sorted(yaml.safe_load_all(out.stdout), key=lambda d: (d["kind"], d["metadata"]["name"]))

    listed = [KUBERNETES / r for r in yaml.safe_load(KUSTOMIZATION.read_text())["resources"]]
    assert build(KUBERNETES) == sorted(documents(listed), key=lambda d: (d["kind"], d["metadata"]["name"]))
    ray = sorted(p for p in KUBERAY.glob("*.yaml") if p.name != KUSTOMIZATION.name)
    for path in ray:
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": [p.name for p in ray]}))
    assert build(tmp_path) == sorted(documents(ray), key=lambda d: (d["kind"], d["metadata"]["name"]))
    # the registry set once (as `kustomize edit set image` writes it) reaches every container, the RayCluster's too
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": ["raycluster.yaml"],
        "images": [{"name": "ghcr.io/your-org/myopia", "newName": "registry.example.com/me/myopia"}],
    }))  # fmt: skip

    def images(node: object) -> set[str]:
        if isinstance(node, dict):
            return {node["image"]} if "image" in node else set().union(*map(images, node.values()))
        return set().union(*map(images, node)) if isinstance(node, list) else set()

    assert images(build(tmp_path)) == {"registry.example.com/me/myopia:cuda"}


# --- the log shipper ----------------------------------------------------------------------------------------------


def log_shipper_configmap() -> dict:
    (cm,) = [m for m in of_kind("ConfigMap") if m["metadata"]["name"] == "ray-log-shipper"]
    return cm


def log_shipper_source() -> str:
    (source,) = log_shipper_configmap()["data"].values()
    return source


def test_log_shipper_copies_appends_and_restarts_rotated_files(tmp_path, monkeypatch):
    ray, logs = tmp_path / "ray", tmp_path / "logs"
    src = ray / "session_2026-01-01_00-00-00_1" / "logs"
    (src / "events").mkdir(parents=True)
    (ray / "session_latest").symlink_to(src.parent)
    monkeypatch.setenv("RAY_TMP_DIR", str(ray))
    monkeypatch.setenv("LOG_DIR", str(logs))
    monkeypatch.setenv("POD_NAME", "myopia-gpu-8x80gb-abcde")
    shipper = {"__name__": "ship_ray_logs"}
    exec(compile(log_shipper_source(), "ship_ray_logs.py", "exec"), shipper)  # the ConfigMap's script
    dst = logs / "myopia-gpu-8x80gb-abcde" / src.parent.name

    (src / "raylet.out").write_text("one\n")
    (src / "events" / "event_GCS.log").write_text("e\n")
    shipper["sync"]()
    assert (dst / "raylet.out").read_text() == "one\n" and (dst / "events" / "event_GCS.log").read_text() == "e\n"
    assert not (logs / "myopia-gpu-8x80gb-abcde" / "session_latest").exists()

    with (dst / "raylet.out").open("r+") as f:  # marks what was already copied: only the new tail is
        f.write("ONE")
    with (src / "raylet.out").open("a") as f:
        f.write("two\n")
    shipper["sync"]()
    assert (dst / "raylet.out").read_text() == "ONE\ntwo\n"

    (src / "raylet.out").rename(src / "raylet.out.1")  # Ray's rotation: a new file under the old name
    (src / "raylet.out").write_text("three\n")
    shipper["sync"]()
    assert (dst / "raylet.out").read_text() == "three\n"
    assert (dst / "raylet.out.1").read_text() == "one\ntwo\n"


def test_log_shipper_makes_a_last_pass_on_sigterm(tmp_path):
    ray, logs = tmp_path / "ray", tmp_path / "logs"
    src = ray / "session_1" / "logs"
    src.mkdir(parents=True)
    (src / "worker.err").write_text("started\n")
    script = tmp_path / "ship_ray_logs.py"
    script.write_text(log_shipper_source())
    environ = {"RAY_TMP_DIR": str(ray), "LOG_DIR": str(logs), "POD_NAME": "p", "INTERVAL_S": "600"}
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, **environ})
    dst = logs / "p" / "session_1" / "worker.err"
    try:
        deadline = time.monotonic() + 20
        while not (dst.exists() and dst.read_text() == "started\n"):
            assert time.monotonic() < deadline and proc.poll() is None, "the first pass did not come"
            time.sleep(0.05)
        with (src / "worker.err").open("a") as f:
            f.write("Traceback: the last words\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert dst.read_text() == "started\nTraceback: the last words\n"
