"""Rebuild the vendored Kubernetes schemas of tests/test_deploy.py (run by hand; needs no network itself).

    python tests/data/k8s/refresh.py ray.io_rayclusters.yaml ray.io_rayjobs.yaml \
        monitoring.coreos.com_podmonitors.yaml service-v1.json

The CRDs come from KubeRay (ray-operator/config/crd/bases/) and the Prometheus Operator
(example/prometheus-operator-crd/); ``service-v1.json`` from the kubernetes-validate package
(``kubernetes-json-schema/v1.36.0-local-strict/``, its ``$ref``s into ``_definitions.json`` beside it
resolved). Each schema is written as ``KIND-VERSION.json.gz``: the served storage version's
``openAPIV3Schema`` with the ``description`` texts left out (they do not validate anything and are 90 % of the
size)."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def strip(node: Any) -> Any:
    """``node`` without its ``description`` texts (a property named ``description`` is kept)."""
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def resolve(node: Any, defs: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """``node`` with every ``{"$ref": ".../_definitions.json#/$defs/NAME"}`` replaced by that definition."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and "#/$defs/" in ref:
            name = ref.rsplit("/", 1)[1]
            if name in seen:  # a recursive type (none in a Service): leave it open
                return {}
            return resolve(
                {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}, defs, (*seen, name)
            )
        return {k: resolve(v, defs, seen) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, defs, seen) for v in node]
    return node


def write(name: str, schema: dict[str, Any]) -> None:
    raw = json.dumps(strip(schema), sort_keys=True, separators=(",", ":")).encode()
    (HERE / f"{name}.json.gz").write_bytes(gzip.compress(raw, 9, mtime=0))
    print(f"{name}.json.gz: {len(raw)} bytes of JSON")


def main(paths: list[str]) -> None:
    for path in map(Path, paths):
        if path.suffix == ".json":  # kubernetes-validate's local-strict schema of a core type
            defs = json.loads((path.parent / "_definitions.json").read_text())["$defs"]
            write(path.stem, resolve(json.loads(path.read_text()), defs))
            continue
        crd = yaml.safe_load(path.read_text())
        kind = crd["spec"]["names"]["kind"].lower()
        for version in crd["spec"]["versions"]:
            if version.get("storage"):
                write(f"{kind}-{version['name']}", version["schema"]["openAPIV3Schema"])


if __name__ == "__main__":
    main(sys.argv[1:])
