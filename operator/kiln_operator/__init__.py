"""Kiln operator: reconciles kiln.dev objects into Kubernetes workloads."""

# The release, as pyproject.toml's version and the charts' appVersion say (a unit test checks that they
# agree): the tag of the default runtime image. A constant rather than importlib.metadata: the operator
# also runs from a source checkout (PYTHONPATH) whose installed metadata, if any, may be another clone's.
__version__ = "0.1.0"
