"""Per-partition offset tracking: what may be committed when events finish out of order.

An offset is committable only when it and every offset before it (that this process
received) has its verdict or DLQ record acknowledged. Events finish out of order (a slow
URL fetch, a batch boundary), so committing the highest finished offset would skip an
unfinished one and lose it on a crash. The tracker keeps, per partition, the received
offsets still pending, and the commit point is just below the smallest of them.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


@dataclass
class _Partition:
    pending: set[int] = field(default_factory=set)
    heap: list[int] = field(default_factory=list)  # pending offsets, lazily cleaned
    highest_received: int = -1
    committed: int = -1  # next offset to read, as last committed or first received

    def commit_point(self) -> int | None:
        """The offset to commit (next to read), or None when nothing new finished."""
        while self.heap and self.heap[0] not in self.pending:
            heapq.heappop(self.heap)
        point = self.heap[0] if self.heap else self.highest_received + 1
        return point if point > self.committed and self.highest_received >= 0 else None


class OffsetTracker:
    """Received/finished offsets per (topic, partition); event-loop only, not thread-safe."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], _Partition] = {}

    def received(self, topic: str, partition: int, offset: int) -> None:
        part = self._parts.get((topic, partition))
        if part is None:
            # The first offset seen is where this assignment started reading: nothing
            # before it is ours to commit.
            part = self._parts[(topic, partition)] = _Partition(committed=offset)
        part.pending.add(offset)
        heapq.heappush(part.heap, offset)
        part.highest_received = max(part.highest_received, offset)

    def finished(self, topic: str, partition: int, offset: int) -> None:
        part = self._parts.get((topic, partition))
        if part is not None:
            part.pending.discard(offset)

    def in_flight(self) -> int:
        return sum(len(p.pending) for p in self._parts.values())

    def committable(self, only: set[tuple[str, int]] | None = None) -> dict[tuple[str, int], int]:
        """{(topic, partition): next offset} for partitions with newly finished work."""
        out = {}
        for key, part in self._parts.items():
            if only is not None and key not in only:
                continue
            point = part.commit_point()
            if point is not None:
                out[key] = point
        return out

    def mark_committed(self, offsets: dict[tuple[str, int], int]) -> None:
        for key, point in offsets.items():
            part = self._parts.get(key)
            if part is not None:
                part.committed = max(part.committed, point)

    def forget(self, partitions: set[tuple[str, int]]) -> None:
        """Drop revoked partitions: their in-flight events belong to the next owner now."""
        for key in partitions:
            self._parts.pop(key, None)

    def committed_point(self, topic: str, partition: int) -> int | None:
        part = self._parts.get((topic, partition))
        return part.committed if part else None
