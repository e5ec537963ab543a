"""Which mirror and destination the running code works for, so that log lines and
metrics can say it without a name passed through every call.

A context variable holds the :class:`Scope`. Threads don't inherit a context, so every
thread and pool task replicator starts runs in a copy of its starter's
(:func:`inherit`): a reconcile's copy pool works for the destination its reconcile
does. Named output is for the configuration file's mirrors only (:func:`name_pairs`):
a single pair from the environment logs and counts exactly as it always did.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Scope:
    source_bucket: str
    mirror: str = ""  # "" for a listener, which serves every mirror of its bucket
    destination: str = ""


_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("replicator_scope", default=None)
_naming = {"pairs": False}


def name_pairs(named: bool) -> None:
    """Whether log lines and metrics name the mirror and destination (set once at start)."""
    _naming["pairs"] = named


def named() -> bool:
    return _naming["pairs"]


def current() -> Scope | None:
    return _scope.get()


@contextmanager
def working_for(scope: Scope) -> Iterator[None]:
    """Run the block, and every thread it starts through :func:`inherit`, for ``scope``."""
    token = _scope.set(scope)
    try:
        yield
    finally:
        _scope.reset(token)


def inherit(fn: Callable[P, T]) -> Callable[P, T]:
    """``fn`` to run in another thread in a copy of this thread's context (one copy per
    call of this function: a context can't be entered by two threads at once)."""
    context = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return context.run(fn, *args, **kwargs)

    return run
