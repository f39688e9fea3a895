"""The deliver stage: a transactional outbox (`outbox`) and one small sender per protocol (`email`: SMTP or
.eml files; `webhook`: Slack incoming webhooks and Standard-Webhooks signed JSON).

A sender takes one `Outgoing` message and either returns the receiver's success code or raises
monitor.errors.DeliveryError (`permanent` or not, with `retry_after_s`), or ChannelGoneError to disable the
channel. Senders never touch the database; the outbox records every attempt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One claimed delivery row, as a sender sees it."""

    delivery_id: int
    kind: str  # email | slack | webhook
    target: str  # e-mail address or channel name
    idempotency_key: str  # Message-ID or webhook-id: the same on every retry
    payload: bytes  # rendered when the digest was built, sent as is
    attempt: int  # 1 for the first try


class Sender(Protocol):
    async def send(self, message: Outgoing) -> str:
        """Deliver the message; return the success code (e.g. '250', '200'). Raise DeliveryError on failure."""
        ...
