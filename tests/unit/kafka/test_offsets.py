from hypothesis import given
from hypothesis import strategies as st

from moderator.kafka.offsets import OffsetTracker


def test_commit_point_waits_for_the_oldest_unfinished_offset() -> None:
    t = OffsetTracker()
    for offset in range(5):
        t.received("in", 0, offset)
    t.finished("in", 0, 1)
    t.finished("in", 0, 2)
    assert t.committable() == {}  # offset 0 still pending: committing 3 would lose it
    t.finished("in", 0, 0)
    assert t.committable() == {("in", 0): 3}
    t.mark_committed({("in", 0): 3})
    assert t.committable() == {}
    t.finished("in", 0, 4)
    assert t.committable() == {}  # 3 is still pending and already the commit point
    t.finished("in", 0, 3)
    assert t.committable() == {("in", 0): 5}


def test_partitions_are_independent_and_forgettable() -> None:
    t = OffsetTracker()
    t.received("in", 0, 10)
    t.received("in", 1, 20)
    t.finished("in", 1, 20)
    assert t.committable() == {("in", 1): 21}
    assert t.in_flight() == 1
    t.forget({("in", 0)})
    assert t.in_flight() == 0
    assert t.committable({("in", 0)}) == {}


@given(st.permutations(list(range(30))), st.integers(min_value=0, max_value=30))
def test_never_commits_past_an_unfinished_offset(order: list[int], how_many: int) -> None:
    t = OffsetTracker()
    for offset in range(30):
        t.received("in", 0, offset)
    finished = set(order[:how_many])
    for offset in order[:how_many]:
        t.finished("in", 0, offset)
    point = t.committable().get(("in", 0))
    expected = next((o for o in range(30) if o not in finished), 30)
    if expected == 0:
        assert point is None
    else:
        assert point == expected
        assert all(o in finished for o in range(point))
