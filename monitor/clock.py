"""Time as the service sees it. The real clock in production; a simulated one (a start instant running at
N x real time) for the offline demo, replays and tests, so that "daily at 08:00" and "72 h story window"
can be exercised in seconds. Everything downstream takes `now` from one of these, never from the OS."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC."""
        ...

    def to_real_seconds(self, simulated_seconds: float) -> float:
        """How long a simulated span lasts in real time."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def to_real_seconds(self, simulated_seconds: float) -> float:
        return simulated_seconds


@dataclass
class SimulatedClock:
    """Starts at `start` and runs `speed` times faster than real time."""

    start: datetime
    speed: float = 1.0
    _real: Callable[[], float] = field(default=time.monotonic, repr=False)
    _t0: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            self.start = self.start.replace(tzinfo=UTC)
        if self.speed <= 0:
            raise ValueError("clock speed must be positive")
        self._t0 = self._real()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(self._real() - self._t0) * self.speed)

    def restart(self) -> None:
        """Put the clock back at `start`: the service calls this once it is ready, so the simulated day
        begins when work can begin (loading the model takes seconds, hours at a high speed)."""
        self._t0 = self._real()

    def to_real_seconds(self, simulated_seconds: float) -> float:
        return simulated_seconds / self.speed


@dataclass
class ManualClock:
    """A clock that moves only when told to (the demo steps through simulated hours)."""

    current: datetime

    def now(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta) -> datetime:
        self.current += delta
        return self.current

    def to_real_seconds(self, simulated_seconds: float) -> float:
        return 0.0
