"""The operator refuses to start, naming each grant, when it may not list or watch a kind it caches."""

from kiln_operator import preflight
from kiln_operator.handlers import WATCHED


def test_every_watched_kind_is_checked_in_every_namespace_and_the_gaps_are_named():
    asked = []

    def can(verb, group, resource, namespace):
        asked.append((verb, group, resource, namespace))
        return not (resource == "configmaps" and verb == "list" and namespace == "b")

    gaps = preflight.missing(WATCHED, ["a", "b"], can)
    assert gaps == ["list configmaps in namespace b"]
    assert len(asked) == len(WATCHED) * 2 * 2
    assert ("watch", "kiln.dev", "inferenceservices", "a") in asked
    assert ("list", "gateway.networking.k8s.io", "httproutes", "b") in asked
    message = preflight.refusal(gaps)
    assert "may not list configmaps in namespace b" in message and "charts/kiln" in message


def test_cluster_wide_asks_once_per_kind_and_all_allowed_is_no_gap():
    asked = []
    assert preflight.missing(WATCHED, None, lambda *a: asked.append(a) or True) == []
    assert {a[3] for a in asked} == {None} and len(asked) == len(WATCHED) * 2
    assert preflight.missing(WATCHED[:1], None, lambda *a: False) == [
        f"list {WATCHED[0][2]}.kiln.dev cluster-wide", f"watch {WATCHED[0][2]}.kiln.dev cluster-wide"]
