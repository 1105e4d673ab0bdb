import importlib
import sys


def test_no_project_package_shadows_the_standard_library_operator_module():
    module = importlib.import_module("operator")
    assert hasattr(module, "itemgetter"), f"`import operator` resolved to {module.__file__}"
    assert "kiln_operator" not in (module.__file__ or "")
    assert sys.stdlib_module_names.__contains__("operator")


def _imports(path):
    import ast
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level) + (node.module or "")
            names.add(base)
            joint = base if base.endswith(".") else base + "."
            names |= {joint + a.name for a in node.names}
    return names


def test_only_the_client_module_talks_to_kubernetes_and_the_plans_are_pure():
    from pathlib import Path
    package = Path(__file__).resolve().parents[2] / "operator/kiln_operator"
    # Who may call k8s.py: the reconcilers that act on plans, and the helpers they hand writes to.
    callers = {"reconcilers.py", "events.py", "finalizers.py", "handlers.py", "controller.py"}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        names = _imports(path)
        if rel != "k8s.py":
            assert not any(n == "kubernetes" or n.startswith("kubernetes.") for n in names), \
                f"{rel} imports the Kubernetes client: only k8s.py may"
        if rel not in callers and rel != "k8s.py":
            assert not any(n in (".k8s", "..k8s") or n.endswith(".k8s") for n in names), \
                f"{rel} imports k8s.py: plans and builders stay pure, only {sorted(callers)} write"


def _spec_field_names():
    """The wire name of every field of the four kinds' specs, nested models included."""
    import typing
    from pydantic import BaseModel
    from kiln_operator.api import KINDS

    names, seen, todo = set(), set(), [k.spec for k in KINDS]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            names.add(field.alias or name)
            hints = [field.annotation]
            while hints:
                hint = hints.pop()
                if isinstance(hint, type) and issubclass(hint, BaseModel):
                    todo.append(hint)
                hints += typing.get_args(hint)
    return names


def _restated_defaults(tree, fields):
    """`x.get("<field>", default)` with a default of its own (a literal other than None, "", {} or [], or a
    constant's name), and `x.get("<field>") or <such a literal>` (`or` an expression is a fallback)."""
    import ast

    def field_get(node, args):
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and len(node.args) == args and isinstance(node.args[0], ast.Constant) and node.args[0].value in fields)

    def a_value(node):
        if isinstance(node, ast.Constant):
            return node.value not in (None, "")
        if isinstance(node, ast.Dict):
            return bool(node.keys)
        if isinstance(node, (ast.List, ast.Tuple)):
            return bool(node.elts)
        return False

    for node in ast.walk(tree):
        if field_get(node, 2) and (a_value(node.args[1]) or isinstance(node.args[1], (ast.Name, ast.Attribute))):
            yield node.lineno, ast.unparse(node)
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            for left, right in zip(node.values, node.values[1:]):
                if field_get(left, 1) and a_value(right):
                    yield left.lineno, f"{ast.unparse(left)} or {ast.unparse(right)}"


# Reads that share a spec field's name but are no spec: each with why.
NOT_SPECS = {
    ("drift.py", "r.get('windowRows') or 0"),  # a monitoring sidecar's /drift report
}


def test_every_spec_default_lives_in_the_api_models_only():
    """Plans, builders and reconcilers read specs through the api models (validation.Parsed), where every
    default is filled in once; a dict read with a default of its own restates one, and may disagree
    with the CRD's (which the apiserver applies anyway)."""
    import ast
    from pathlib import Path
    package = Path(__file__).resolve().parents[2] / "operator/kiln_operator"
    fields = _spec_field_names()
    assert {"maxBatchSize", "trafficPercent", "runHistoryLimit", "versions", "enabled"} <= fields  # the walk works
    restated = [f"{rel}:{line} {code}" for path in sorted(package.rglob("*.py"))
                if (rel := path.relative_to(package).as_posix()).split("/")[0] != "api"
                for line, code in _restated_defaults(ast.parse(path.read_text()), fields)
                if (rel, code) not in NOT_SPECS]
    assert restated == [], "read these from the parsed spec, whose api model has the default: " + "; ".join(restated)
