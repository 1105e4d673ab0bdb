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
