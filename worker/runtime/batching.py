"""How many jobs a lane asks for in one batch, and when a failing link should slow it down.

A batch is bounded three ways: the lane's free slots; ``batch_bytes`` of bodies, judged by
the bodies seen so far (on a slow link, large bodies make smaller batches, so the outcomes
queued behind them are confirmed sooner); and a cap that halves each time the connection
is lost again before beanstalkd confirmed any outcome we owed (a livelock in the making),
and doubles back as outcomes are confirmed.

And a fourth, from what the last reserves found: a batch whose reserves all got a job is
followed by one twice as big; one that ran the tube dry (some answered TIMED_OUT) by one
reserve more than it got. A lane on an idle or trickling tube then asks for one or two
jobs at a time, not a reserve per free slot after every job (each answered TIMED_OUT: at
a thousand jobs a second those replies were most of the daemon's work, and its latency).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LIVELOCK_STREAK", "BatchLimits"]

# Connections lost in a row before any owed outcome was confirmed, before the lane says so
# loudly, halves its batches and backs off harder.
LIVELOCK_STREAK = 3
_BODY_ESTIMATE_WEIGHT = 0.2  # how fast the body-size estimate follows new jobs


@dataclass
class BatchLimits:
    slots: int
    batch_bytes: int
    cap: int = 0  # 0: slots
    body_estimate: float = 0.0  # bytes per body, from the jobs seen so far
    fruitless: int = 0  # connections lost in a row before confirming an owed outcome
    _confirmed: int = 0  # outcomes confirmed since the cap last changed
    probe: int = 0  # reserves the last batch's luck allows (0: slots)

    def __post_init__(self) -> None:
        self.cap = self.cap or self.slots
        self.probe = self.probe or self.slots

    def wanted(self, held: int) -> int:
        """Reserves to send now, holding ``held`` jobs."""
        free = min(self.slots - held, self.cap, self.probe)
        if self.body_estimate > 0:
            free = min(free, max(1, int(self.batch_bytes // self.body_estimate)))
        return max(0, free)

    def reserved(self, asked: int, got: int) -> None:
        """``asked`` reserves of one batch got ``got`` jobs."""
        if asked:
            self.probe = min(self.slots, 2 * asked if got >= asked else got + 1)

    def saw_body(self, size: int) -> None:
        size = max(size, 1)
        if self.body_estimate == 0:
            self.body_estimate = float(size)
        else:
            w = _BODY_ESTIMATE_WEIGHT
            self.body_estimate = (1 - w) * self.body_estimate + w * size

    def confirmed(self, count: int = 1) -> None:
        """beanstalkd confirmed outcomes: the link works; the cap grows back."""
        self.fruitless = 0
        self._confirmed += count
        if self.cap < self.slots and self._confirmed >= self.cap:
            self.cap = min(self.slots, self.cap * 2)
            self._confirmed = 0

    def connection_lost(self, *, owed: int, confirmed: int) -> bool:
        """After a lost connection; True when it keeps failing before confirming anything
        we owed (the cap was halved)."""
        self.fruitless = self.fruitless + 1 if owed and not confirmed else 0
        if self.fruitless < LIVELOCK_STREAK:
            return False
        self.cap = max(1, self.cap // 2)
        self._confirmed = 0
        return True
