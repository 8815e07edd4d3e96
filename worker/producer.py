"""Putting jobs from Python applications: the JSON envelope, checked before anything is sent.

::

    from tubeworker.producer import Producer

    producer = Producer(["10.0.0.1:11300", "10.0.0.2:11300"])  # once, when the app starts
    job_id = producer.enqueue("emails", "send-welcome", {"user_id": 42}, delay="30s")

:class:`Producer` blocks and is thread-safe (a web app's request threads share one);
:class:`AsyncProducer` is the same for Trio, and what ``job.put()`` uses inside the daemon.
Both keep one connection per server (opened on first use, reused, opened again after a
failure; :class:`Producer` also after a ``fork``), and fail over: a job goes to the first
server, in the order given, that stores it. A server that just failed is tried last for
``demote_for`` seconds. A job stored on a server is processed by the workers watching that
server.

Checked before anything is sent (:class:`InvalidJob`): the tube name (beanstalkd's rules:
1 to 200 bytes of ``A-Z a-z 0-9 - + / ; . $ _ ( )``, not starting with ``-``), the task name
(a non-empty string), the payload (strict JSON: no NaN), the body's size (against
``max_job_size`` when given, and against the server's own ``max-job-size``, read from
``stats`` when connecting), the priority (0, most urgent, to 2**32-1), and delay and ttr:
whole seconds, or a float, a ``timedelta`` or a duration such as ``"30s"``, ``"5m"``,
``"1h"``, ``"250ms"``, rounded up to whole seconds (beanstalkd counts whole seconds); a ttr
is at least 1 s.

The errors, all :class:`ProducerError` (also ``greenstalk.Error``, like every error of
talking to beanstalkd; each server reply keeps its greenstalk class too)::

    ProducerError
    ├── InvalidJob              nothing was sent: a bad tube, task, payload, number, or
    │   │                       body (also ValueError and LocalProtocolError)
    │   ├── JobTooBig           the body is over max-job-size: ours, the server's (read
    │   │                       when connecting), or the server said JOB_TOO_BIG
    │   └── PayloadInvalid      the payload does not fit its task's declared type
    │                           (``register``, or a handler loaded in this process)
    ├── NoServerAvailable       no server stored the job; ``failures`` says why, per server
    │   ├── ServerUnreachable   every server: cannot connect, or the connection was lost
    │   │                       (also ConnectionLostError)
    │   ├── ServerDraining      every server: DRAINING (drain mode, after SIGUSR1: it
    │   │                       takes no new jobs until it is restarted)
    │   └── ServerOutOfMemory   every server: OUT_OF_MEMORY (it cannot reserve binlog
    │                           space, or allocate: "try again later")
    ├── SpoolFull               no server stored it and the producer's spool is full
    └── JobBuried               BURIED <id>: the server ran out of memory growing its
                                queue; the job *is* stored, buried (in memory only: it
                                may not survive a restart), and runs only when kicked.
                                It is never put again elsewhere.

When servers fail for different reasons, :class:`NoServerAvailable` itself is raised. A
put whose connection breaks after the command was sent may have been stored all the same,
so a failover can store a job twice: at least once, like everything else here.
"""

from __future__ import annotations

from tubeworker.chains import Step
from tubeworker.producing.checks import (
    DEFAULT_SERVER,
    SERVERS_ENV,
    PutRequest,
    Seconds,
    make_envelope,
    parse_servers,
    prepare_put,
    to_seconds,
)
from tubeworker.producing.errors import (
    InvalidJob,
    JobBuried,
    JobTooBig,
    NoServerAvailable,
    PayloadInvalid,
    ProducerError,
    ServerDraining,
    ServerFailure,
    ServerOutOfMemory,
    ServerUnreachable,
    SpoolFull,
)
from tubeworker.producing.failover import ProducerStatistics, ServerHealth
from tubeworker.producing.spool import FlushResult, Receipt, Spool, SpoolStatus
from tubeworker.producing.sync_io import Producer, SyncConnection, enqueue
from tubeworker.producing.trio_io import AsyncProducer, enqueue_async

__all__ = [
    "DEFAULT_SERVER",
    "SERVERS_ENV",
    "AsyncProducer",
    "FlushResult",
    "InvalidJob",
    "JobBuried",
    "JobTooBig",
    "NoServerAvailable",
    "PayloadInvalid",
    "Producer",
    "ProducerError",
    "ProducerStatistics",
    "PutRequest",
    "Receipt",
    "Seconds",
    "ServerDraining",
    "ServerFailure",
    "ServerHealth",
    "ServerOutOfMemory",
    "ServerUnreachable",
    "Spool",
    "SpoolFull",
    "SpoolStatus",
    "Step",
    "SyncConnection",
    "enqueue",
    "enqueue_async",
    "make_envelope",
    "parse_servers",
    "prepare_put",
    "to_seconds",
]
