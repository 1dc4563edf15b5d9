"""Write KServe's InferenceService schema (v1beta1) as JSON Schema, from KServe's Python SDK.

KServe publishes its CRD only in its source repository; what PyPI has is the SDK, whose models
are generated from the same OpenAPI definitions (``openapi_types``, ``attribute_map`` and the
"must not be `None`" checks of required fields). This script reads them from the SDK's wheel
without importing it (the SDK pulls in grpc, pandas, kubernetes, ...), and writes the schema
tests/deploy/test_kserve.py validates against. KServe's own types are strict (no unknown
fields); Kubernetes' types inside them (V1Container, ...) are left open here, and checked with
kubernetes-validate instead. Regenerate after a KServe release:

    pip download kserve==0.21.0 --no-deps -d /tmp/kserve
    python tests/deploy/kserve_schema.py /tmp/kserve/kserve-0.21.0-py3-none-any.whl \\
        > tests/deploy/kserve-inferenceservice.schema.json
"""

from __future__ import annotations

import ast
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

ROOT = "V1beta1InferenceService"
KSERVE_TYPE = re.compile(r"^V1(alpha\d|beta\d)\w+$")
REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")
SCALARS = {"str": {"type": "string"}, "int": {"type": "integer"}, "bool": {"type": "boolean"}, "float": {"type": "number"}}


def read_models(wheel: Path) -> dict[str, tuple[dict[str, str], dict[str, str], set[str]]]:
    """class name -> (attribute types, attribute -> JSON key, required attributes)."""
    models = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not re.fullmatch(r"kserve/models/v1\w+\.py", name):
                continue
            source = archive.read(name).decode()
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.ClassDef):
                    found = {
                        t.id: ast.literal_eval(a.value)
                        for a in node.body
                        if isinstance(a, ast.Assign)
                        for t in a.targets
                        if isinstance(t, ast.Name) and t.id in ("openapi_types", "attribute_map")
                    }
                    if "openapi_types" in found:
                        models[node.name] = (found["openapi_types"], found["attribute_map"], set(REQUIRED.findall(source)))
    return models


def type_schema(kind: str, pending: list[str]) -> dict[str, Any]:
    if kind in SCALARS:
        return SCALARS[kind]
    if kind == "object":
        return {}
    if kind == "ResourceQuantity":
        return {"type": ["string", "integer", "number"]}
    if match := re.fullmatch(r"list\[(.+)\]", kind):
        return {"type": "array", "items": type_schema(match.group(1), pending)}
    if match := re.fullmatch(r"dict\(str, (.+)\)", kind):
        return {"type": "object", "additionalProperties": type_schema(match.group(1), pending)}
    if KSERVE_TYPE.match(kind):
        pending.append(kind)
        return {"$ref": f"#/$defs/{kind}"}
    return {"type": "object", "description": f"Kubernetes {kind} (checked by kubernetes-validate)"}


def schema(wheel: Path) -> dict[str, Any]:
    models = read_models(wheel)
    definitions: dict[str, Any] = {}
    pending = [ROOT]
    while pending:
        name = pending.pop()
        if name in definitions:
            continue
        if name not in models:  # a named scalar in KServe's definitions (MetricQuantity: "80", 80)
            definitions[name] = {"type": ["string", "integer", "number"]}
            continue
        types, keys, required = models[name]
        skip = {"status"} if name == ROOT else set()  # written by the controller, never applied
        definitions[name] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {keys[a]: type_schema(t, pending) for a, t in types.items() if a not in skip},
            "required": sorted(keys[a] for a in required if a not in skip),
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"KServe {ROOT} (from the SDK's wheel {wheel.name})",
        "$ref": f"#/$defs/{ROOT}",
        "$defs": dict(sorted(definitions.items())),
    }


if __name__ == "__main__":
    json.dump(schema(Path(sys.argv[1])), sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")
