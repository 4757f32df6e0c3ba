"""Shared memory for the bytes an event sends to a decode process.

Sending a 400 KB record through `ProcessPoolExecutor` pickles it, writes it into a pipe in
64 KB pieces from the pool's feeder thread, and reads and unpickles it in the worker: ~0.3 ms
of the service process's CPU per event on top of the pool's own ~70 µs (measured on 2 cores),
and as much again in the worker. An `Arena` is one shared-memory segment cut into fixed slots:
the bytes are copied into a free slot (one memcpy) when the call is pickled (`Parcel`), the
slot's name and place cross the pipe instead, and the decode process copies them out.

A slot is lent for one trip and returned only when the executor says the trip is over (the
worker answered, failed or died), never when the waiting event gives up: a worker still
reading a slot must not see it lent again. Bytes larger than a slot, or a trip when every slot
is out, go through the pipe as before.

The segment is created at start and every page written once, so its memory is taken then: a
tmpfs past its size fails there, not with a SIGBUS mid-decode. Where /dev/shm lacks the room,
`Arena.create` says so and returns None, and every trip uses the pipe.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Final

from moderator.log import get

__all__ = ["SLOT_BYTES", "Arena", "Parcel", "SlotRef", "payload"]

log = get("decode_shared")
_SHM_DIR: Final = "/dev/shm"
_HEADROOM: Final = 64 * 1024 * 1024  # left free in /dev/shm for everything else
SLOT_BYTES: Final = 1024 * 1024  # a 400 KB photo as JSON (540 KB) fits; larger ones use the pipe


@dataclass(frozen=True, slots=True)
class SlotRef:
    """Where a trip's bytes wait in shared memory: what crosses the pipe instead of them."""

    segment: str
    offset: int
    length: int


class Arena:
    """`slots` slots of `slot_bytes` each in one shared-memory segment, owned by the service
    process (it creates and removes the segment)."""

    def __init__(self, memory: SharedMemory, slots: int, slot_bytes: int) -> None:
        self._memory = memory
        self._view = _view(memory)
        self.slot_bytes = slot_bytes
        self.slots = slots
        self._free = list(range(slots - 1, -1, -1))
        # Lent from the pool's feeder thread (`Parcel`), given back on the event loop.
        self._lock = threading.Lock()

    @classmethod
    def create(cls, slots: int, slot_bytes: int) -> Arena | None:
        """A new arena, or None (logged) when /dev/shm cannot hold it."""
        size = slots * slot_bytes
        if slots < 1 or slot_bytes < 1:
            return None
        try:
            stat = os.statvfs(_SHM_DIR)
            room = stat.f_bavail * stat.f_frsize
        except OSError:
            room = None  # no /dev/shm to ask: SharedMemory reports what it finds
        if room is not None and room < size + _HEADROOM:
            log.warning(
                "no room in /dev/shm for the decode processes' shared memory; using pipes",
                extra={"fields": {"wanted_bytes": size, "free_bytes": room}},
            )
            return None
        try:
            memory = SharedMemory(create=True, size=size)
        except OSError as exc:
            log.warning(
                "shared memory for the decode processes failed; using pipes",
                extra={"fields": {"error": str(exc)}},
            )
            return None
        _view(memory)[:size] = bytes(size)  # take every page now (see the module's doc)
        return cls(memory, slots, slot_bytes)

    @property
    def free(self) -> int:
        return len(self._free)

    def lend(self, data: bytes) -> SlotRef | None:
        """Copy `data` into a free slot; None when it does not fit one or none is free."""
        if len(data) > self.slot_bytes:
            return None
        with self._lock:
            if not self._free:
                return None
            slot = self._free.pop()
        offset = slot * self.slot_bytes
        self._view[offset : offset + len(data)] = data
        return SlotRef(self._memory.name, offset, len(data))

    def give_back(self, ref: SlotRef) -> None:
        """Return a slot once its trip is over (idempotence is the caller's: once per lend)."""
        slot = ref.offset // self.slot_bytes
        with self._lock:
            if ref.segment != self._memory.name or slot in self._free:
                raise ValueError(f"slot {slot} of {ref.segment} is not out on loan here")
            self._free.append(slot)

    def close(self) -> None:
        """Remove the segment. Decode processes still attached keep their mapping until they
        exit; nothing new can attach."""
        self._memory.close()
        with contextlib.suppress(FileNotFoundError):
            self._memory.unlink()


class Parcel:
    """Bytes bound for a decode process, put in a slot only when they are pickled: the pool
    pickles a call as it hands it to a worker (`ProcessPoolExecutor`'s feeder thread), not
    when it is queued, so slots go to the few calls in the workers' hands, however many
    wait. Unpickles as a `SlotRef`, or as the bytes themselves when no slot was free."""

    __slots__ = ("_arena", "_data", "ref")

    def __init__(self, arena: Arena, data: bytes) -> None:
        self._arena = arena
        self._data = data
        self.ref: SlotRef | None = None  # set once lent; the pool gives it back

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if self.ref is None:
            self.ref = self._arena.lend(self._data)
        if self.ref is None:
            return _as_is, (self._data,)
        return SlotRef, (self.ref.segment, self.ref.offset, self.ref.length)


def _as_is(data: bytes) -> bytes:
    return data


_attached: dict[str, SharedMemory] = {}  # in a decode process: segments by name


def payload(data: bytes | SlotRef) -> bytes:
    """In a decode process: a trip's bytes, from the pipe or out of their slot (a copy: the
    slot goes back to the loop as soon as this trip ends)."""
    if isinstance(data, bytes):
        return data
    memory = _attached.get(data.segment)
    if memory is None:
        memory = _attached[data.segment] = SharedMemory(name=data.segment)
    return bytes(_view(memory)[data.offset : data.offset + data.length])


def _view(memory: SharedMemory) -> memoryview:
    view = memory.buf
    if view is None:  # closed
        raise ValueError(f"shared memory {memory.name} is closed")
    return view
