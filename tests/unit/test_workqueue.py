"""The reconcile queue: many events for one object make one reconcile, never two at once, none lost."""

import threading

from kiln_operator.workqueue import WorkQueue


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_events_for_one_object_collapse_into_one_reconcile():
    q = WorkQueue()
    for _ in range(5):
        q.add("a")
    q.add("b")
    assert q.depth() == 2
    assert [q.get(timeout=0), q.get(timeout=0), q.get(timeout=0)] == ["a", "b", None]


def test_a_change_during_a_reconcile_is_reconciled_again_after_it_not_beside_it():
    q = WorkQueue()
    q.add("a")
    assert q.get(timeout=0) == "a"
    q.add("a")  # a watch event arrives while "a" is reconciled
    assert q.get(timeout=0) is None  # no second worker takes "a" meanwhile
    q.done("a")
    assert q.get(timeout=0) == "a"


def test_a_wake_up_comes_at_its_time_and_the_earliest_request_wins():
    clock = Clock()
    q = WorkQueue(clock=clock)
    q.add_after("a", 30)
    q.add_after("a", 10)
    q.add_after("a", 20)
    assert q.get(timeout=0) is None
    clock.now += 10
    assert q.get(timeout=0) == "a"
    q.done("a")
    clock.now += 30
    assert q.get(timeout=0) is None  # the later requests were superseded, not queued twice


def test_the_oldest_wait_is_measured_from_the_first_add():
    clock = Clock()
    q = WorkQueue(clock=clock)
    q.add("a")
    clock.now += 4
    q.add("b")
    q.add("a")
    assert q.oldest_wait() == 4
    q.get(timeout=0)
    assert q.oldest_wait() == 0


def test_a_waiting_worker_wakes_for_a_new_key_and_close_releases_it():
    q = WorkQueue()
    got = []
    worker = threading.Thread(target=lambda: got.append(q.get(timeout=5)))
    worker.start()
    q.add("a")
    worker.join(5)
    assert got == ["a"]
    closing = threading.Thread(target=lambda: got.append(q.get()))
    closing.start()
    q.close()
    closing.join(5)
    assert got == ["a", None]
