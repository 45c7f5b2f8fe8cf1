"""The one cache implementation: bounded, least recently used out, never keeps a failure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import function.fn  # noqa: F401 - imports every module that owns a cache
from function import memo

ROOT = Path(__file__).resolve().parents[2]


def test_a_cache_never_holds_more_than_its_size_and_forgets_the_least_recently_used() -> None:
    cache: memo.BoundedCache[str, int] = memo.BoundedCache("test-lru", 2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (1, None, 3, 2)


def test_memoize_computes_once_per_argument_and_caches_none_too() -> None:
    calls: list[str] = []

    @memo.memoize("test-once", 4)
    def compute(text: str) -> str | None:
        calls.append(text)
        return None if text == "none" else text.upper()

    want = ["X", "X", None, None]
    got = [compute("x"), compute("x"), compute("none"), compute("none")]
    assert (got, calls) == (want, ["x", "none"])


def test_memoize_never_keeps_an_exception() -> None:
    calls: list[int] = []

    @memo.memoize("test-failure", 4)
    def fail(n: int) -> int:
        calls.append(n)
        raise ValueError(n)

    for _ in range(2):
        with pytest.raises(ValueError, match="7"):
            fail(7)
    assert calls == [7, 7]


def test_clear_all_empties_every_cache() -> None:
    cache: memo.BoundedCache[str, int] = memo.BoundedCache("test-clear", 2)
    cache.put("a", 1)
    memo.clear_all()
    assert all(size == 0 for size in memo.caches().values())


def test_the_module_docstring_lists_every_cache_of_the_function() -> None:
    documented = set(re.findall(r"^\| ([a-z, -]+?)\s+\|", memo.__doc__ or "", re.MULTILINE))
    names = {name.strip() for row in documented for name in row.split(",")} - {"cache"}
    running = {name for name in memo.caches() if not name.startswith("test-")}
    assert running == names
