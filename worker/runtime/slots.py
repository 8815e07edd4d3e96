"""In-flight slots: the process-wide cap on reserved jobs (``max_in_flight``).

A lane takes a slot before it sends a reserve and gives it back when the reserve finds no
job, or when the job it got has an outcome, was returned, or never started. Each
:class:`Slot` is released exactly once, however many of those paths reach it (a lost
connection mid-batch reaches several).
"""

from __future__ import annotations

import trio

from tubeworker.frozen import frozen

__all__ = ["InFlight", "InFlightStatistics", "Slot"]


class Slot:
    """One reserved (or about to be reserved) job's share of the cap."""

    __slots__ = ("_held", "_owner")

    def __init__(self, owner: InFlight) -> None:
        self._owner = owner
        self._held = True

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        """Give the slot back; later calls do nothing."""
        if self._held:
            self._held = False
            self._owner._give_back(self)


@frozen
class InFlightStatistics:
    held: int
    limit: int | None


class InFlight:
    """Slots for reserved jobs, capped at ``limit`` (None: uncapped, but still counted)."""

    def __init__(self, limit: int | None) -> None:
        self._limiter = trio.CapacityLimiter(limit) if limit else None
        self._held = 0

    def take(self, wanted: int) -> list[Slot]:
        """Up to ``wanted`` slots, without waiting."""
        slots: list[Slot] = []
        for _ in range(max(0, wanted)):
            slot = Slot(self)
            if self._limiter is not None:
                try:
                    self._limiter.acquire_on_behalf_of_nowait(slot)
                except trio.WouldBlock:
                    break
            self._held += 1
            slots.append(slot)
        return slots

    async def take_one(self) -> Slot:
        """One slot, waiting for it when the cap is reached."""
        slot = Slot(self)
        if self._limiter is not None:
            await self._limiter.acquire_on_behalf_of(slot)
        self._held += 1
        return slot

    def _give_back(self, slot: Slot) -> None:
        self._held -= 1
        if self._limiter is not None:
            self._limiter.release_on_behalf_of(slot)

    def statistics(self) -> InFlightStatistics:
        return InFlightStatistics(
            held=self._held,
            limit=int(self._limiter.total_tokens) if self._limiter is not None else None,
        )
