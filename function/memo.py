"""Every cache of the function: one bounded implementation, one registry.

Crossplane calls the function for every machine at every poll with mostly the same
content: the same inventory text, the same fleet, the same Reservations, often the very
same request. Each cache below keeps a value computed from request content, keyed by
that content (or its SHA-256), so a hit is exactly what computing again would give.
Every cache is bounded, least recently used first out, thread-safe (tests call the
function from several threads), and never keeps an exception: a failure is computed,
and reported, again each time.

The caches, by owner (`caches()` lists them at run time):

| cache                   | owner                 | keeps                                      |
|-------------------------|-----------------------|--------------------------------------------|
| responses               | fn                    | whole answers, by the request's digest     |
| inputs                  | wire                  | the parsed step input                      |
| inventories             | pipeline              | the parsed, validated inventory            |
| fleets, records         | wire                  | the fleet as records, each XR              |
| specs                   | fleet                 | each intent's parsed spec                  |
| reservation-tables      | wire                  | the Reservations table                     |
| interface-ips           | placement             | the IP of a held CIDR address              |
| modules                 | record                | a Workspace's module text, parsed          |
| documents               | cloudinit.composer    | rendered user-data, by the guest's facts   |
| templates, site-templates | cloudinit.library   | compiled and parsed templates              |
| builtin-templates       | cloudinit.library     | the templates shipped with the function    |
| rendered-yaml           | cloudinit.library     | rendered user-data, parsed back            |
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, ParamSpec, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
P = ParamSpec("P")
R = TypeVar("R")


class BoundedCache(Generic[K, V]):
    """A least-recently-used map that never holds more than `size` entries."""

    def __init__(self, name: str, size: int) -> None:
        """Create an empty cache of at most `size` entries, listed in `caches()` by name."""
        self.name = name
        self._size = size
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        with _REGISTRY_LOCK:
            _REGISTRY.append(self)

    def get(self, key: K) -> V | None:
        """The cached value, or None; a hit becomes the most recently used entry."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        """Remember a value, forgetting the least recently used entry when full."""
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        """The cached value, or compute()'s, remembered; an exception is not.

        compute runs outside the lock: two threads that miss at once both compute, and
        since every value is a function of its key, either answer is the answer.
        """
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value

    def trim(self, size: int) -> None:
        """Forget the least recently used entries until at most `size` remain."""
        with self._lock:
            while len(self._entries) > size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        """How many entries the cache holds."""
        return len(self._entries)


_REGISTRY: list[BoundedCache[Any, Any]] = []
_REGISTRY_LOCK = threading.Lock()


def memoize(name: str, size: int) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Cache a pure function of hashable positional arguments in a BoundedCache.

    An exception is never cached: the next call computes (and raises) again.
    """

    def decorate(compute: Callable[P, R]) -> Callable[P, R]:
        cache: BoundedCache[tuple[Any, ...], tuple[R]] = BoundedCache(name, size)

        @functools.wraps(compute)
        def cached(*args: P.args, **kwargs: P.kwargs) -> R:
            if kwargs:
                return compute(*args, **kwargs)
            # Boxed, so that a function returning None is cached too.
            return cache.get_or_compute(args, lambda: (compute(*args, **kwargs),))[0]

        return cached

    return decorate


def digest(content: Any) -> bytes:
    """The SHA-256 of bytes, or of a protobuf message's deterministic bytes: its content's key."""
    if not isinstance(content, bytes):
        content = content.SerializeToString(deterministic=True)
    return hashlib.sha256(content).digest()


def caches() -> dict[str, int]:
    """Every cache by name, with how many entries it holds now."""
    with _REGISTRY_LOCK:
        return {cache.name: len(cache) for cache in _REGISTRY}


def clear_all() -> None:
    """Forget every cached value (tests that must compute afresh)."""
    with _REGISTRY_LOCK:
        for cache in _REGISTRY:
            cache.clear()
