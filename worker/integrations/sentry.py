"""Sentry error tracking as tubeworker middleware (``pip install tubeworker[sentry]``).

Enable it in the config::

    [middleware]
    enabled = ["sentry"]

    [middleware.sentry]
    dsn = "https://KEY@o0.ingest.sentry.io/0"   # or leave it out and set SENTRY_DSN
    environment = "production"
    send_payload = false                        # the payload can hold personal data

Each failed attempt (an exception, ``Retry``, a timeout) is captured with the job's id,
tube, task, attempt and body size as tags and context, grouped by handler; each burial is
captured too (the handler's ``Bury`` as a message, at level warning). The payload itself is
sent only with ``send_payload = true``. Jobs buried before a handler runs (bad bodies,
poison jobs, unknown tasks) are not handler runs: they are counted in the metrics and
logged, not sent here.
"""

from __future__ import annotations

from typing import Any

import sentry_sdk

from tubeworker import Bury, Job, Middleware, Retry, Verdict

__all__ = ["SentryMiddleware"]


class SentryMiddleware(Middleware):
    def __init__(
        self,
        *,
        dsn: str | None = None,
        environment: str | None = None,
        release: str | None = None,
        sample_rate: float = 1.0,
        send_payload: bool = False,
        capture_retries: bool = True,
        transport: Any = None,
    ) -> None:
        """Options from ``[middleware.sentry]``. Without ``dsn`` (and ``transport``, which
        tests use) a client set up elsewhere is kept, or SENTRY_DSN is read; without either
        nothing is sent. ``capture_retries = false`` sends only failures that end in a
        burial."""
        configured = sentry_sdk.get_client().dsn is not None
        if dsn is not None or transport is not None or not configured:
            sentry_sdk.init(
                dsn=dsn,
                environment=environment,
                release=release,
                sample_rate=sample_rate,
                transport=transport,
            )
        self.send_payload = send_payload
        self.capture_retries = capture_retries

    def _context(self, job: Job, verdict: Verdict, reason: str | None) -> dict[str, Any]:
        context: dict[str, Any] = {
            "id": job.id,
            "tube": job.tube,
            "task": job.task,
            "attempt": job.attempt,
            "max_attempts": job.max_attempts,
            "body_bytes": len(job.body),
            "verdict": verdict,
            "reason": reason,
        }
        if self.send_payload:
            context["payload"] = job.payload if job.task is not None else repr(job.body[:1024])
        return context

    def _scope(
        self, scope: sentry_sdk.Scope, job: Job, verdict: Verdict, reason: str | None
    ) -> None:
        scope.set_tag("tubeworker.tube", job.tube)
        scope.set_tag("tubeworker.task", job.task or "(bound)")
        scope.set_tag("tubeworker.verdict", verdict)
        scope.set_context("job", self._context(job, verdict, reason))
        scope.fingerprint = ["{{ default }}", job.task or job.tube]

    async def on_error(self, job: Job, error: BaseException, verdict: Verdict, reason: str) -> None:
        if isinstance(error, Retry) and not self.capture_retries:
            return
        with sentry_sdk.new_scope() as scope:
            self._scope(scope, job, verdict, reason)
            if isinstance(error, Bury):
                scope.set_level("warning")
                sentry_sdk.capture_message(f"job buried by its handler: {error.reason}")
            else:
                sentry_sdk.capture_exception(error)

    async def after(self, job: Job, verdict: Verdict, reason: str | None) -> None:
        if verdict != "bury" or reason is None:
            return
        # A burial after the last attempt: one event that says the job is given up.
        if job.attempt >= job.max_attempts and "giving up" in reason:
            with sentry_sdk.new_scope() as scope:
                self._scope(scope, job, verdict, reason)
                scope.set_level("error")
                sentry_sdk.capture_message(f"job buried after {job.attempt} attempts: {reason}")
