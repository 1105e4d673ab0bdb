import importlib
import sys


def test_no_project_package_shadows_the_standard_library_operator_module():
    module = importlib.import_module("operator")
    assert hasattr(module, "itemgetter"), f"`import operator` resolved to {module.__file__}"
    assert "kiln_operator" not in (module.__file__ or "")
    assert sys.stdlib_module_names.__contains__("operator")
