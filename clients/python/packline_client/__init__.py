"""packline's client: submit and follow packs over HTTP (`Packline`), publish pack requests to
Kafka (`publish_pack_request`), verify webhooks (`verify_webhook`). Depends on httpx and aiokafka only."""

from packline_client.client import Packline
from packline_client.kafka import pack_request, publish_pack_request
from packline_client.types import (
    APLUS_KINDS,
    LISTING_KINDS,
    TERMINAL,
    Change,
    Image,
    ImageEvent,
    OtherEvent,
    Pack,
    PackEvent,
    PacklineError,
    Product,
    ResyncEvent,
    RevokedEvent,
    StreamEvent,
    Submitted,
)
from packline_client.webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "APLUS_KINDS", "LISTING_KINDS", "TERMINAL", "Change", "Image", "ImageEvent", "OtherEvent", "Pack", "PackEvent", "Packline",
    "PacklineError", "Product", "ResyncEvent", "RevokedEvent", "StreamEvent", "Submitted", "WebhookVerificationError",
    "pack_request", "publish_pack_request", "verify_webhook",
]
