"""Domain exceptions. Edges translate them: HTTP statuses in the api, retry or
dead-letter by class in the workers."""


class PacklineError(Exception):
    """Base of every domain error."""


class InvalidMessage(PacklineError):
    """A Kafka message that cannot be parsed or fails its schema: goes to invalid.dlq."""


class TransientImageError(PacklineError):
    """The image backend may succeed later (timeout, connection, 5xx, 429)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentImageError(PacklineError):
    """Retrying cannot help (content policy, invalid size, other 4xx): dead-letter at once."""


class UnknownAccount(PacklineError):
    pass


class BrokerUnavailable(PacklineError):
    """Kafka did not take the message in time: the api answers 503, nothing is charged."""
