"""Every exception tubeworker raises.

::

    Exception
    ├── TubeworkerError
    │   ├── ConfigError                 a config file, flag or variable is wrong (exit 78)
    │   ├── ConnectionLostError         the transport failed, was closed, or a command was
    │   │   │                           interrupted mid-exchange; the connection is closed and
    │   │   │                           any job it had reserved is beanstalkd's again
    │   │   └── ServerUnresponsiveError connect or the first reply missed its deadline
    │   └── JobLostError                a handler asked for its job (``job.touch()``) after
    │                                   it stopped being this worker's: its connection was
    │                                   lost, or beanstalkd gave it to someone else
    └── greenstalk.Error                one family for everything beanstalkd itself says
        ├── ProtocolError               (also TubeworkerError)
        │   ├── LocalProtocolError      we were about to send something illegal; nothing was
        │   │                           sent and the connection is still usable (also ValueError)
        │   └── RemoteProtocolError     the server sent bytes we cannot parse, or a reply the
        │       │                       command cannot have; the connection is poisoned
        │       └── UnexpectedReplyError a well-formed reply a lane cannot go on from (an
        │                               error to ``watch`` or ``reserve``): it reconnects
        └── greenstalk.BeanstalkdError  a well-formed error reply: NotFoundError,
                                        TimedOutError, DeadlineSoonError, BuriedError,
                                        JobTooBigError, DrainingError, OutOfMemoryError, …

The sans-I/O protocol returns error replies as values; the Trio client's convenience
methods raise greenstalk's classes for them, so code written against greenstalk's errors
keeps working.
"""

from __future__ import annotations

import greenstalk

__all__ = [
    "ConfigError",
    "ConnectionLostError",
    "JobLostError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "ServerUnresponsiveError",
    "TubeworkerError",
    "UnexpectedReplyError",
]


class TubeworkerError(Exception):
    """Base class of tubeworker's own errors."""


class ConfigError(TubeworkerError):
    """A configuration value is wrong. The message names the source, the key and the problem."""

    def __init__(self, problem: str, *, key: str | None = None, source: str | None = None):
        self.problem = problem
        self.key = key
        self.source = source
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {problem}" if where else problem)


class ConnectionLostError(TubeworkerError, ConnectionError):
    """The connection to beanstalkd can no longer be used; it has been closed."""


class ServerUnresponsiveError(ConnectionLostError):
    """The server did not accept the connection or answer its first command in time.

    beanstalkd out of file descriptors completes TCP handshakes but never answers.
    """


class ProtocolError(TubeworkerError, greenstalk.Error):
    """Base class of protocol violations, ours or the server's."""


class LocalProtocolError(ProtocolError, ValueError):
    """A command argument is illegal. Raised before anything is sent."""


class RemoteProtocolError(ProtocolError):
    """The server's bytes make no sense for what we sent. The connection is unusable."""


class UnexpectedReplyError(RemoteProtocolError):
    """A well-formed reply a lane cannot go on from (say, an error to ``watch``); the lane
    closes the connection and reconnects."""


class JobLostError(TubeworkerError):
    """The job is no longer this worker's: its connection was lost, or its TTR ran out and
    beanstalkd gave it to someone else. Nothing more can be done for it here."""
