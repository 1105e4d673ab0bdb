"""The model's signature (signature.json, written by kiln-train) and what serving derives from it.

    {"inputs": [{"name": "f0", "type": "number"|"integer"|"category"|"boolean", "nullable": bool?}, ...],
     "output": {"type": "label"|"value", "classes": [...]},
     "missing": {"number": "NaN", "category": "", ...},     # optional: the model takes missing values
     "onnx": {"inputs": [{"name", "column", "elemType"}], "outputs": {...}}}   # optional

A feature accepts null when it says `nullable`, or when `missing` lists its type (kiln-train writes
that for models whose preprocessing imputes). Two input layouts follow. When every feature is a
number or an integer (the common case and the fast one) a request becomes a float64 matrix, rows x
features, with NaN for null. Otherwise it becomes an object matrix of validated Python values (None
for null) that the runtime turns into typed columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import orjson

from .errors import BadRequest, LoadError

NUMBER, INTEGER, CATEGORY, BOOLEAN = "number", "integer", "category", "boolean"
FEATURE_TYPES = (NUMBER, INTEGER, CATEGORY, BOOLEAN)
LABEL, VALUE = "label", "value"


@dataclass(frozen=True)
class Feature:
    name: str
    type: str
    nullable: bool = False


@dataclass(frozen=True)
class Signature:
    features: tuple[Feature, ...]
    output: str  # label | value
    classes: tuple | None = None
    missing_category: str = ""  # what a null category becomes for the model
    onnx_inputs: tuple[str, ...] | None = None  # the ONNX graph's input per feature, in feature order
    names: tuple[str, ...] = field(init=False)
    index: dict[str, int] = field(init=False)
    numeric: bool = field(init=False)  # every feature is a number or an integer
    integer_columns: tuple[int, ...] = field(init=False)
    strict_columns: tuple[int, ...] = field(init=False)  # numeric columns that refuse null
    json_number_types: frozenset = field(init=False)  # Python types a numeric row may hold

    def __post_init__(self):
        names = tuple(f.name for f in self.features)
        set_ = object.__setattr__
        set_(self, "names", names)
        set_(self, "index", {n: i for i, n in enumerate(names)})
        set_(self, "numeric", all(f.type in (NUMBER, INTEGER) for f in self.features))
        set_(self, "integer_columns", tuple(i for i, f in enumerate(self.features) if f.type == INTEGER))
        set_(self, "strict_columns", tuple(i for i, f in enumerate(self.features) if not f.nullable))
        types = {float, int}
        if any(f.nullable for f in self.features):
            types.add(type(None))
        set_(self, "json_number_types", frozenset(types))

    @property
    def width(self) -> int:
        return len(self.features)

    def describe(self) -> str:
        """A short list of the features for error messages."""
        if self.width <= 6:
            return ", ".join(f"{f.name} ({f.type})" for f in self.features)
        head = ", ".join(f.name for f in self.features[:3])
        return f"{head}, ..., {self.features[-1].name} ({self.width} features)"


def parse(doc: bytes | str | dict) -> Signature:
    """Validates a signature document; raises LoadError naming the first problem."""
    try:
        data = orjson.loads(doc) if isinstance(doc, (bytes, str)) else doc
    except orjson.JSONDecodeError as exc:
        raise LoadError(f"signature is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise LoadError("signature must be a JSON object with 'inputs' and 'output'")
    inputs = data.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise LoadError("signature.inputs must be a non-empty list of {name, type}")
    missing = data.get("missing")
    missing = missing if isinstance(missing, dict) else {}
    features, seen = [], set()
    for i, item in enumerate(inputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise LoadError(f"signature.inputs[{i}] needs a non-empty string 'name'")
        name, ftype = item["name"], item.get("type")
        if ftype not in FEATURE_TYPES:
            raise LoadError(f"signature.inputs[{i}] ({name}): type {ftype!r} is not one of {FEATURE_TYPES}")
        if name in seen:
            raise LoadError(f"signature.inputs[{i}]: feature name {name!r} appears twice")
        seen.add(name)
        features.append(Feature(name, ftype, bool(item.get("nullable", ftype in missing))))
    output = data.get("output") or {}
    if not isinstance(output, dict):
        raise LoadError("signature.output must be an object")
    kind = output.get("type", LABEL)
    if kind not in (LABEL, VALUE):
        raise LoadError(f"signature.output.type {kind!r} is not 'label' or 'value'")
    classes = output.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not classes:
            raise LoadError("signature.output.classes must be a non-empty list")
        classes = tuple(classes)
    onnx_inputs = None
    layout = data.get("onnx")
    if isinstance(layout, dict) and isinstance(layout.get("inputs"), list):
        names = [i.get("name") if isinstance(i, dict) else None for i in layout["inputs"]]
        if len(names) != len(features) or not all(isinstance(n, str) for n in names):
            raise LoadError("signature.onnx.inputs must name one ONNX input per feature")
        onnx_inputs = tuple(names)
    missing_category = missing.get(CATEGORY, "")
    return Signature(tuple(features), kind, classes if kind == LABEL else None,
                     missing_category if isinstance(missing_category, str) else "", onnx_inputs)


# --- validation of one value, for the slow path (mixed types) and for error diagnosis -------------

def check_value(feature: Feature, value, where: str):
    """Returns the value as the model takes it, or raises BadRequest naming where and why."""
    t = type(value)
    if value is None:
        if feature.nullable:
            return None
        raise BadRequest(f"{where} (feature {feature.name!r}): null is not allowed")
    if feature.type == NUMBER:
        if t is float or t is int:
            if t is float and not math.isfinite(value):
                raise BadRequest(f"{where} (feature {feature.name!r}): {value} is not a finite number")
            return value
        raise BadRequest(f"{where} (feature {feature.name!r}): expected a number, got {jtype(value)}")
    if feature.type == INTEGER:
        if t is int:
            return value
        if t is float and value.is_integer():
            return int(value)
        raise BadRequest(f"{where} (feature {feature.name!r}): expected an integer, got {jtype(value)}"
                         + (f" {value}" if t is float else ""))
    if feature.type == BOOLEAN:
        if t is bool:
            return value
        raise BadRequest(f"{where} (feature {feature.name!r}): expected a boolean, got {jtype(value)}")
    if t is str:
        return value
    raise BadRequest(f"{where} (feature {feature.name!r}): expected a string (category), got {jtype(value)}")


def jtype(value) -> str:
    """The JSON name of a Python value's type, as the client wrote it."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)

