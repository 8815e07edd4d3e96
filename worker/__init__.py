"""tubeworker: a Trio worker daemon for beanstalkd.

This module is the public API for handler authors; the daemon's internals live in the
submodules and are not part of it.
"""

from __future__ import annotations

from tubeworker.backoff import parse_retry_after
from tubeworker.idempotency import idempotent
from tubeworker.job import Bury, Duplicate, Job, Middleware, Retry, Verdict, handler
from tubeworker.producing.errors import PayloadInvalid

__version__ = "0.1.0"

__all__ = [
    "Bury",
    "Duplicate",
    "Job",
    "Middleware",
    "PayloadInvalid",
    "Retry",
    "Verdict",
    "__version__",
    "handler",
    "idempotent",
    "parse_retry_after",
]
