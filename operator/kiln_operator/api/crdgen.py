"""Generates the CustomResourceDefinitions from the pydantic models.

pydantic writes JSON Schema (draft 2020-12); a CRD wants a *structural* OpenAPI v3 schema: no $ref,
no anyOf around a type, a type on every node (except int-or-string and free-form nodes), and
booleans for exclusive bounds. This module does that translation and nothing else.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from .kinds import CATEGORY, GROUP, KINDS, VERSION, Kind

_DROP = {"title", "$defs"}
_VALUES = {"default", "enum", "x-kubernetes-validations", "examples"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        # A field's own description and rules win over the referenced model's.
        rules = target.get("x-kubernetes-validations", []) + extra.pop("x-kubernetes-validations", [])
        target.update(extra)
        if rules:
            target["x-kubernetes-validations"] = rules
        return _resolve(target, defs)
    return {k: _resolve(v, defs) for k, v in node.items() if k not in _DROP}


def _structural(node: Any) -> Any:
    if isinstance(node, list):
        return [_structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    # Values (defaults, enums, rules) are data, not schemas: leave them as they are.
    node = {k: v if k in _VALUES else _structural(v) for k, v in node.items()}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        types = sorted(o.get("type", "") for o in options)
        if types == ["integer", "string"]:
            node["x-kubernetes-int-or-string"] = True
        elif len(options) == 1:
            node = {**options[0], **node}
        else:
            raise ValueError(f"cannot express anyOf {options} in a structural schema")
        if node.get("default", 0) is None:
            del node["default"]
    if node.get("default", 0) is None:
        del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[inclusive] = node.pop(bound)
            node[bound] = True
    if node.get("type") == "object" or "properties" in node:
        node.setdefault("type", "object")
        extra = node.get("additionalProperties")
        if extra is True or extra == {}:
            # Free-form maps (estimator params): kept as given, never pruned.
            node.pop("additionalProperties")
            node["x-kubernetes-preserve-unknown-fields"] = True
        elif extra is False:
            node.pop("additionalProperties")
    if node.get("type") == "array" and node.get("items") == {}:
        node["items"] = {"x-kubernetes-preserve-unknown-fields": True}
    if node == {}:
        return {"x-kubernetes-preserve-unknown-fields": True}
    return node


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = _structural(_resolve(raw, raw.get("$defs", {})))
    return schema


def crd(kind: Kind) -> dict[str, Any]:
    spec = openapi_schema(kind.spec)
    status = openapi_schema(kind.status)
    spec["description"] = kind.spec.__doc__.strip()
    status["description"] = kind.status.__doc__.strip()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name, "labels": {"app.kubernetes.io/part-of": "kiln"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": list(kind.columns),
                "schema": {"openAPIV3Schema": {
                    "description": kind.description,
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string", "description": "Versioned schema of this object."},
                        "kind": {"type": "string", "description": "Kind of this object."},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": status,
                    },
                }},
            }],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD, for every kind."""
    return {f"{GROUP}_{k.plural}.yaml": crd(k) for k in KINDS}


def main(argv: list[str] | None = None) -> None:
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Write the Kiln CRDs generated from the API models.")
    parser.add_argument("--out", action="append", help="directory to write the CRD files into (repeatable)")
    for out in map(Path, parser.parse_args(argv).out or ["crds"]):
        out.mkdir(parents=True, exist_ok=True)
        for name, body in all_crds().items():
            (out / name).write_text(render(body))
            print(f"wrote {out / name}")


def render(body: dict[str, Any]) -> str:
    import yaml

    header = "# Generated by `make crds` from operator/kiln_operator/api: do not edit.\n"
    return header + yaml.safe_dump(body, sort_keys=False, width=110)


if __name__ == "__main__":
    main()
