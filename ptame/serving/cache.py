"""A thread-safe least-recently-used cache, and its one get-or-compute sequence."""

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager, nullcontext
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


class LRUCache(Generic[Key, Value]):
    """A thread-safe least-recently-used map with at most ``capacity`` entries."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[Key, Value] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key) -> Value | None:
        """The value of ``key`` (now the most recently used), or None."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Key, value: Value) -> None:
        """Store a value, dropping the least recently used entries beyond the capacity."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get_or_compute(
        self, key: Key, compute: Callable[[], Value], guard: AbstractContextManager[object] | None = None
    ) -> Value:
        """The value of ``key``; on a miss, ``compute()`` inside ``guard`` (a lane), stored.

        The cache is read again inside the guard: a caller that waited for the lane while another
        computed the same key gets that result instead of computing it twice.
        """
        cached = self.get(key)
        if cached is not None:
            return cached
        with guard if guard is not None else nullcontext():
            cached = self.get(key)
            if cached is not None:
                return cached
            value = compute()
            self.put(key, value)
            return value

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
