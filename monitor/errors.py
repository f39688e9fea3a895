"""One error root. Each stage translates the errors of the libraries it uses into one of these at its
boundary (``raise FetchError(...) from e``); loops catch them per feed / per channel, log them with
context and go on."""


class MonitorError(Exception):
    """Root of every error monitor raises on purpose. The message says what failed and what to do."""


class ConfigError(MonitorError):
    """feeds.toml (or an environment override) is invalid."""


class FetchError(MonitorError):
    """A feed could not be fetched (network, HTTP status, size, deadline, refused address)."""


class ParseError(MonitorError):
    """A feed body could not be read as RSS/Atom at all."""


class EmbedError(MonitorError):
    """The embedding model could not be loaded or used."""


class DeliveryError(MonitorError):
    """A message could not be delivered. `permanent` says whether retrying can help."""

    def __init__(
        self, message: str, *, permanent: bool = False, retry_after_s: float | None = None, code: str | None = None,
        recipient_only: bool = False, address_refused: bool = False,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after_s = retry_after_s
        self.code = code  # SMTP reply code or HTTP status, recorded with the attempt
        # The receiver is up but refused this one message or recipient for now (greylisting, a full mailbox):
        # another message's success says nothing about when this one will go, so its retry keeps its backoff.
        self.recipient_only = recipient_only
        # The mail server refused the address itself for good (5.1.x "no such user"...): it is suppressed.
        self.address_refused = address_refused


class ChannelGoneError(DeliveryError):
    """The receiving end no longer exists (HTTP 410, Slack `channel_not_found`...): the channel is disabled
    and the reason recorded; re-enable it once the URL is fixed."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, permanent=True, code=code)
