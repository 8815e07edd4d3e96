"""Consume-side idempotency: do a job's side effect at most once per key, with a store.

beanstalkd delivers at least once: a worker that dies after the effect but before the
delete runs the job again elsewhere. For effects that must not repeat::

    store = SqliteStore("/var/lib/myapp/done.sqlite")

    @handler()
    @idempotent(store)                  # the key: the envelope's "id" (job.id_key)
    async def send_receipt(job: Job) -> None: ...

A job whose key the store has seen is done at once (``Duplicate``: deleted, cause
``duplicate``, counted per tube in ``tubeworker_jobs_total``); otherwise the handler runs
and the key is recorded after it returns. Between the effect and the record a crash can
still repeat it (at least once, narrowed to that instant). Where the effect is a write to
the same database as the store, :meth:`SqliteStore.transaction` makes it exactly once: the
key and the effect commit together or not at all.

The store is anything with ``done(key) -> bool`` and ``record(key) -> None``
(:class:`IdempotencyStore`); both are called from a worker thread, so a blocking database
client is fine.
"""

from __future__ import annotations

import functools
import inspect
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from tubeworker.contracts import key_path_value
from tubeworker.job import _SPEC_ATTRIBUTE, Duplicate, HandlerSpec, Job

__all__ = ["IdempotencyStore", "SqliteStore", "idempotent"]

F = TypeVar("F", bound=Callable[..., Any])


@runtime_checkable
class IdempotencyStore(Protocol):
    def done(self, key: str) -> bool:
        """Whether the effect of ``key`` is recorded as done."""
        ...

    def record(self, key: str) -> None:
        """Record the effect of ``key`` as done (recording twice is harmless)."""
        ...


class SqliteStore:
    """Keys done, in a SQLite table (``tubeworker_done``: key, when); WAL, one connection
    per thread. ``keep``: seconds a key is remembered (None: for ever); older keys are
    forgotten as new ones are recorded."""

    def __init__(self, path: str | Path, *, keep: float | None = None) -> None:
        self.path = str(path)
        self.keep = keep
        self._local = threading.local()
        with self._connection() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS tubeworker_done "
                "(key TEXT PRIMARY KEY, done_at REAL NOT NULL)"
            )

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        yield self._db()

    def done(self, key: str) -> bool:
        row = self._db().execute("SELECT 1 FROM tubeworker_done WHERE key = ?", (key,))
        return row.fetchone() is not None

    def record(self, key: str) -> None:
        db = self._db()
        db.execute(
            "INSERT INTO tubeworker_done (key, done_at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            (key, time.time()),
        )
        if self.keep is not None:
            db.execute("DELETE FROM tubeworker_done WHERE done_at < ?", (time.time() - self.keep,))

    @contextmanager
    def transaction(self, key: str) -> Iterator[sqlite3.Connection]:
        """Exactly once for effects in this database: the key is inserted first, in one
        transaction with what the block writes through the connection it gives; a key
        already there raises :class:`~tubeworker.Duplicate` (nothing written). The block's
        exception rolls both back."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            inserted = db.execute(
                "INSERT INTO tubeworker_done (key, done_at) VALUES (?, ?) "
                "ON CONFLICT (key) DO NOTHING",
                (key, time.time()),
            ).rowcount
            if not inserted:
                raise Duplicate(f"idempotency key {key!r} was done already")
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def idempotent(
    store: IdempotencyStore, *, key: str | Callable[[Job], Any] | None = None
) -> Callable[[F], F]:
    """Run the handler at most once per key (see the module docstring). ``key``: a payload
    path (``"payload.order_id"``) or a function of the job; default the envelope's ``id``
    (``job.id_key``). A job without a key runs as usual. Works above or below
    ``@handler``."""
    key_of = _key_function(key)

    def decorate(func: F) -> F:
        if inspect.iscoroutinefunction(func):
            wrapper = _once_async(func, store, key_of)
        else:
            wrapper = _once_sync(func, store, key_of)
        spec = getattr(func, _SPEC_ATTRIBUTE, None)
        if isinstance(spec, HandlerSpec):  # @handler below us: its options, this function
            setattr(wrapper, _SPEC_ATTRIBUTE, replace(spec, func=wrapper))
        return wrapper  # type: ignore[return-value]

    return decorate


def _key_function(key: str | Callable[[Job], Any] | None) -> Callable[[Job], str | None]:
    if key is None:
        return lambda job: job.id_key
    if callable(key):
        call = key

        def by_function(job: Job) -> str | None:
            value = call(job)
            return None if value is None else str(value)

        return by_function
    path = key
    return lambda job: key_path_value(job.payload, path)


def _once_async(
    func: Callable[..., Any], store: IdempotencyStore, key_of: Callable[[Job], str | None]
) -> Callable[..., Any]:
    @functools.wraps(func)
    async def run_once(job: Job) -> None:
        import trio

        found = key_of(job)
        if found is None:
            await func(job)
            return
        if await trio.to_thread.run_sync(store.done, found):
            raise Duplicate(f"idempotency key {found!r} was done already")
        await func(job)
        await trio.to_thread.run_sync(store.record, found)

    return run_once


def _once_sync(
    func: Callable[..., Any], store: IdempotencyStore, key_of: Callable[[Job], str | None]
) -> Callable[..., Any]:
    @functools.wraps(func)
    def run_once(job: Job) -> None:
        found = key_of(job)
        if found is not None and store.done(found):
            raise Duplicate(f"idempotency key {found!r} was done already")
        func(job)
        if found is not None:
            store.record(found)

    return run_once
