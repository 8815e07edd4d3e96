"""Flow control per external API: a circuit breaker per API, the tracker that owns them,
and the httpx transport that reports requests to it.

Layers, lowest first: ``breaker`` (the pure state machine for one API: injected clock and
random source, no I/O), ``tracker`` (the registry: host names → APIs, reports, probe
permits for the dispatcher, transition listeners, statistics), ``http`` (the transport).
The runtime consults the tracker before running a job; nothing here imports the runtime.
"""

from tubeworker.flow.breaker import (
    BreakerSettings,
    BreakerState,
    BreakerStatistics,
    CallOutcome,
    CircuitBreaker,
    ProbeSlot,
    Transition,
    TransitionReason,
)
from tubeworker.flow.http import TrackingTransport, outcome_of_status, parse_retry_after
from tubeworker.flow.tracker import (
    CALLER,
    ApiSettings,
    ApiTracker,
    Caller,
    Permit,
    TrackedCall,
    TrackerStatistics,
    call_api,
)

__all__ = [
    "CALLER",
    "ApiSettings",
    "ApiTracker",
    "BreakerSettings",
    "BreakerState",
    "BreakerStatistics",
    "CallOutcome",
    "Caller",
    "CircuitBreaker",
    "Permit",
    "ProbeSlot",
    "TrackedCall",
    "TrackerStatistics",
    "TrackingTransport",
    "Transition",
    "TransitionReason",
    "call_api",
    "outcome_of_status",
    "parse_retry_after",
]
