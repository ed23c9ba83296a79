"""The cluster configurations in cluster/: the launcher YAML (AWS, GCP) through Ray's own
validator, the KubeRay manifests against the v1.7.0 CRD schemas (and, stricter than the CRDs,
no field the schema does not declare), and the conventions they share with cluster/local/up.sh
and cluster/Dockerfile: token authentication, a dashboard that is not public, idle workers kept
per CPU, one image, the jobs' real options. Nothing here touches the network."""

import copy
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER = ["aws.yaml", "gcp.yaml"]
# The CRD schemas live beside the repository (../shared/schemas, see its README); a plain clone
# has none, and the tests that need them skip. RESLSTM_KUBERAY_SCHEMAS overrides the place.
SCHEMAS = Path(os.environ.get("RESLSTM_KUBERAY_SCHEMAS",
                              REPO.parent / "shared" / "schemas" / "kuberay-v1.7.0"))
MANIFESTS = {"raycluster.yaml": "RayCluster", "rayjob-extract.yaml": "RayJob",
             "rayjob-train.yaml": "RayJob", "rayservice.yaml": "RayService"}
RAY_VERSION = ray.__version__  # the cluster runs the Ray the project pins
IMAGE_DIR = "/home/ray/reslstm"  # where cluster/Dockerfile puts the code


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def soft_limit(cpus: int) -> int:
    """Idle workers a node keeps, as cluster/local/up.sh and init_ray set it."""
    return 2 * cpus + 2


# ---------------------------------------------------------------------------------------------
# Launcher YAML


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_passes_rays_validator(name):
    # What `ray up` does first: fill in the provider's defaults, then check Ray's schema.
    # Neither needs the cloud's SDK or credentials.
    config = prepare_config(load(name))
    validate_config(config)
    assert config["available_node_types"][config["head_node_type"]]["max_workers"] == 0


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_validator_rejects_misspelt_keys(name):
    config = load(name)
    bad = copy.deepcopy(config)
    bad["head_start_ray_command"] = bad.pop("head_start_ray_commands")
    with pytest.raises(jsonschema.ValidationError, match="head_start_ray_command"):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(config)
    bad["available_node_types"]["gpu_worker"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(bad))


def _start_command(commands: list[str]) -> str:
    starts = [c for c in commands if "ray start" in c]
    assert len(starts) == 1, commands
    return " ".join(starts[0].split())


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_conventions(name):
    config = load(name)
    types = config["available_node_types"]
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(t.get("max_workers", 0) > 0 for t in gpu)
    assert any(t["resources"].get("CPU", 0) > 0 and not t["resources"].get("GPU") for t in types.values())
    # The head takes no tasks and keeps 2 idle workers (0 CPUs); workers 2 per CPU + 2.
    head = _start_command(config["head_start_ray_commands"])
    worker = _start_command(config["worker_start_ray_commands"])
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert "--num-cpus=0" in head and "RAY_num_workers_soft_limit=2" in head
    assert "RAY_num_workers_soft_limit=$((2 * $(nproc) + 2))" in worker
    # Token authentication on every node, with the token file the file mounts bring.
    for cmd in (head, worker):
        assert "RAY_AUTH_MODE=token" in cmd
        assert "RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token" in cmd
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # The dashboard (and job API) only on the head's loopback: reached through `ray dashboard`.
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in json.dumps(config)
    # This package: the working tree (".", relative to where `ray up` runs) mounted on every
    # node and pip-installed there; .venv and the like stay behind.
    mount = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    assert any(re.search(rf"pip install .*{re.escape(mount)}\b", c) for c in config["setup_commands"])
    assert ".gitignore" in config["rsync_filter"]
    # Ray's image of the Ray the project pins, Python 3.11.
    images = [v for k, v in config["docker"].items() if k.endswith("image")]
    images += [t["docker"]["worker_image"] for t in types.values() if "docker" in t]
    assert images and all(i.startswith(f"rayproject/ray:{RAY_VERSION}-py311-") for i in images)


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_commands_are_valid_shell(name):
    config = load(name)
    keys = ["initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands"]
    for key in keys:
        for cmd in config.get(key) or []:
            check = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
            assert check.returncode == 0, f"{key}: {cmd!r}: {check.stderr}"


# ---------------------------------------------------------------------------------------------
# KubeRay manifests

needs_schemas = pytest.mark.skipif(
    not all((SCHEMAS / f"{kind}.schema.json").is_file() for kind in set(MANIFESTS.values())),
    reason=f"KubeRay v1.7.0 CRD schemas not found at {SCHEMAS} (set RESLSTM_KUBERAY_SCHEMAS)")

OBJECT_META = {"name", "namespace", "labels", "annotations"}


def schema_for(kind: str) -> dict:
    return json.loads((SCHEMAS / f"{kind}.schema.json").read_text())


def _declared(schema: dict) -> tuple[dict, object]:
    """Properties a schema node declares (also through anyOf/oneOf/allOf) and its
    additionalProperties."""
    props = dict(schema.get("properties") or {})
    extra = schema.get("additionalProperties")
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(key) or []:
            props.update(branch.get("properties") or {})
            if extra is None and isinstance(branch.get("additionalProperties"), dict):
                extra = branch["additionalProperties"]
    return props, extra


def undeclared_fields(doc, schema: dict, path: str = "") -> list[str]:
    """Paths of the fields in ``doc`` that ``schema`` does not declare. The CRDs set no
    ``additionalProperties: false``, so the API server would prune such a field silently
    (a misspelt ``rayStartParam`` is just dropped): here every key of an object whose schema
    declares properties must be one of them; a map (additionalProperties with a schema) takes
    any key and checks the values; an object declared free-form (no properties, or
    x-kubernetes-preserve-unknown-fields without properties) takes anything."""
    out: list[str] = []
    if isinstance(doc, dict):
        props, extra = _declared(schema)
        for key, value in doc.items():
            where = f"{path}.{key}" if path else key
            if key in props:
                out += undeclared_fields(value, props[key], where)
            elif isinstance(extra, dict):
                out += undeclared_fields(value, extra, where)
            elif props or extra is False:
                out.append(where)
    elif isinstance(doc, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(doc):
            out += undeclared_fields(item, schema["items"], f"{path}[{i}]")
    return out


def _check_manifest(doc: dict, kind: str) -> list[str]:
    """CRD validation errors and undeclared fields of one manifest ([] when clean)."""
    schema = schema_for(kind)
    problems = [f"{'.'.join(map(str, e.path))}: {e.message}"
                for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    problems += [f"undeclared field {p}" for p in undeclared_fields(doc, schema)]
    # The root's metadata is a bare object in the CRD: an ObjectMeta, of which we use these.
    problems += [f"undeclared field metadata.{k}" for k in doc.get("metadata", {}) if k not in OBJECT_META]
    return problems


@needs_schemas
@pytest.mark.parametrize("name", list(MANIFESTS))
def test_manifest_matches_its_crd_with_no_undeclared_field(name):
    docs = list(yaml.safe_load_all((CLUSTER / "kuberay" / name).read_text()))
    assert len(docs) == 1
    doc = docs[0]
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == MANIFESTS[name]
    assert _check_manifest(doc, MANIFESTS[name]) == []


@needs_schemas
def test_strict_check_rejects_misspelt_fields():
    doc = load("kuberay/raycluster.yaml")
    schema = schema_for("RayCluster")
    head = doc["spec"]["headGroupSpec"]
    head["rayStartParam"] = head.pop("rayStartParams")
    doc["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resource"] = {}
    doc["spec"]["enableInTreeAutoscalling"] = True
    doc["metadata"]["label"] = {"a": "b"}
    # The CRD schema alone lets them all through (the API server would drop them silently) ...
    jsonschema.validate(doc, schema)
    # ... the strict check names each one.
    assert sorted(p for p in _check_manifest(doc, "RayCluster")) == sorted([
        "undeclared field spec.headGroupSpec.rayStartParam",
        "undeclared field spec.workerGroupSpecs[1].template.spec.containers[0].resource",
        "undeclared field spec.enableInTreeAutoscalling",
        "undeclared field metadata.label"])
    # Inside a RayJob's embedded cluster spec and a RayService's too.
    job = load("kuberay/rayjob-train.yaml")
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["envFrm"] = []
    assert sorted(_check_manifest(job, "RayJob")) == [
        "undeclared field spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].envFrm",
        "undeclared field spec.shutdownAfterJobFinish"]
    svc = load("kuberay/rayservice.yaml")
    svc["spec"]["serveConfig"] = svc["spec"].pop("serveConfigV2")
    assert _check_manifest(svc, "RayService") == ["undeclared field spec.serveConfig"]


def test_strict_walk_on_small_schemas():
    schema = {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "integer"}}},
        "m": {"type": "object", "additionalProperties": {"type": "object", "properties": {"x": {}}}},
        "free": {"type": "object"},
        "kept": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "l": {"type": "array", "items": {"type": "object", "properties": {"n": {}}}},
        "q": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}}
    doc = {"a": {"b": 1, "c": 2}, "m": {"any": {"x": 1, "y": 2}}, "free": {"z": 1},
           "kept": {"z": {"w": 1}}, "l": [{"n": 1}, {"o": 2}], "q": 3, "r": 4}
    assert sorted(undeclared_fields(doc, schema)) == ["a.c", "l[1].o", "m.any.y", "r"]


def _cluster_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return {"RayCluster": lambda: spec, "RayJob": lambda: spec["rayClusterSpec"],
            "RayService": lambda: spec["rayClusterConfig"]}[doc["kind"]]()


def _cpus(quantity: str) -> int:
    return int(quantity[:-1]) // 1000 if quantity.endswith("m") else int(quantity)


def _dockerfile_image() -> str:
    text = (CLUSTER / "Dockerfile").read_text()
    return re.search(r"docker build -f cluster/Dockerfile -t (\S+) \.", text).group(1)


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_manifest_conventions(name):
    doc = load(f"kuberay/{name}")
    spec = _cluster_spec(doc)
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"  # the dashboard is not public
    assert head["rayStartParams"].get("num-cpus") == "0"
    groups = [("head", head)] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    gpus = 0
    for group, g in groups:
        for c in g["template"]["spec"]["containers"]:
            # Every Ray container runs the image cluster/Dockerfile builds.
            assert c["image"] == _dockerfile_image(), (group, c["image"])
            limits = c["resources"]["limits"]
            assert c["resources"]["requests"] == limits  # Ray sizes itself by the limits
            gpus += int(limits.get("nvidia.com/gpu", 0))
            cpus = int(g["rayStartParams"].get("num-cpus", _cpus(str(limits["cpu"]))))
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("RAY_num_workers_soft_limit") == str(soft_limit(cpus)), group
    assert gpus >= 1  # a GPU worker group


def test_rayjobs_run_the_jobs_from_the_image_on_s3():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"WORKDIR {IMAGE_DIR}" in dockerfile
    for name, script in [("rayjob-extract.yaml", "extract.py"), ("rayjob-train.yaml", "train.py")]:
        spec = load(f"kuberay/{name}")["spec"]
        assert spec["submissionMode"] == "K8sJobMode"
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
        argv = shlex.split(spec["entrypoint"])
        assert argv[:2] == ["python", f"{IMAGE_DIR}/jobs/{script}"]
        assert (REPO / "jobs" / script).is_file()
        uris = [a for a in argv if "://" in a]
        assert uris and all(u.startswith("s3://") for u in uris)  # shared storage, not a pod's disk
        assert "runtimeEnvYAML" not in spec or "working_dir" not in spec["runtimeEnvYAML"]


def test_rayjob_entrypoints_use_options_the_jobs_have():
    for name, script in [("rayjob-extract.yaml", "extract.py"), ("rayjob-train.yaml", "train.py")]:
        argv = shlex.split(load(f"kuberay/{name}")["spec"]["entrypoint"])
        used = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
        help_text = subprocess.run([sys.executable, str(REPO / "jobs" / script), "--help"],
                                   capture_output=True, text=True, timeout=300, cwd=REPO)
        assert help_text.returncode == 0, help_text.stderr[-2000:]
        known = set(re.findall(r"(--[A-Za-z0-9][A-Za-z0-9-]*)", help_text.stdout))
        assert used <= known, f"{name}: options {sorted(used - known)} not in {script} --help"


def _serve_config() -> dict:
    return yaml.safe_load(load("kuberay/rayservice.yaml")["spec"]["serveConfigV2"])


def test_rayservice_serves_the_app():
    serve = _serve_config()
    # Inside the pod the proxy must listen on 0.0.0.0 for the Kubernetes Service to reach it;
    # the Service is ClusterIP. Said here explicitly, not left to a default.
    assert serve["http_options"] == {"host": "0.0.0.0", "port": 8000}
    [app] = serve["applications"]
    assert app["import_path"] == "reslstm.distributed.serve.app:app"
    assert app["route_prefix"] == "/"
    assert app["runtime_env"]["env_vars"]["RESLSTM_MODEL_URI"] == "models:/reslstm@champion"
    [dep] = app["deployments"]
    assert dep["name"] == "ActionRecognizer"
    scale = dep["autoscaling_config"]
    assert 1 <= scale["min_replicas"] <= scale["max_replicas"]
    assert dep["ray_actor_options"]["num_gpus"] == 1
    # Backpressure: a bounded queue, then 503 with Retry-After.
    assert dep["max_queued_requests"] > 0 and dep["backpressure_config"]["retry_after_s"] > 0
    workers = load("kuberay/rayservice.yaml")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    gpu_groups = [g for g in workers
                  if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
    assert sum(g["maxReplicas"] for g in gpu_groups) >= scale["max_replicas"]
    # The replicas run in the GPU pods: the endpoint's token reaches them from a Secret.
    for g in gpu_groups:
        env = {e["name"]: e for e in g["template"]["spec"]["containers"][0]["env"]}
        assert env["RESLSTM_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"


def test_rayservice_config_passes_serves_schema():
    schema = pytest.importorskip(
        "ray.serve.schema", reason="Ray Serve is not importable here (needs ray[serve])")
    raw = _serve_config()
    model = schema.ServeDeploySchema
    config = model.model_validate(raw) if hasattr(model, "model_validate") else model.parse_obj(raw)
    assert config.applications[0].deployments[0].name == "ActionRecognizer"

    # Serve's schema ignores unknown keys (a misspelt num_replica passes): check them here.
    def fields(m) -> set[str]:
        return set(getattr(m, "model_fields", None) or m.__fields__)

    assert set(raw) <= fields(schema.ServeDeploySchema)
    assert set(raw["http_options"]) <= fields(schema.HTTPOptionsSchema)
    for app in raw["applications"]:
        assert set(app) <= fields(schema.ServeApplicationSchema)
        for dep in app["deployments"]:
            assert set(dep) <= fields(schema.DeploymentSchema)
            assert set(dep["ray_actor_options"]) <= fields(schema.RayActorOptionsSchema)


# ---------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_is_rays_image_plus_this_package():
    text = (CLUSTER / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert instructions[0] == f"FROM rayproject/ray:{RAY_VERSION}-py311-gpu"
    for line in instructions:
        if line.startswith("COPY"):
            for src in line.split()[2:-1]:  # COPY --chown=... SRC... DEST
                assert (REPO / src).exists(), src
    run = " ".join(line for line in instructions if line.startswith("RUN"))
    assert "pip install --no-cache-dir ." in run
    # torch and Ray as the image has them where they satisfy the requirements: no forced reinstall.
    assert not re.search(r"--force-reinstall|--upgrade|\s-U\s|--ignore-installed", run)
