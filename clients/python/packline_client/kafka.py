"""Publishing pack requests straight to Kafka, as another service may instead of calling the
api: the same `pack.requested` JSON the api publishes, keyed by user id."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from packline_client.types import APLUS_KINDS, LISTING_KINDS, Product

TOPIC = "packs.requested"
VERSION = 2  # of pack.requested: `aplus` is the list of A+ modules


def pack_request(
    user_id: str, product: Product, images: Sequence[str] = LISTING_KINDS, aplus: bool | Sequence[str] = False,
    pack_id: str | None = None, source: str | None = None,
) -> dict[str, Any]:
    """The `pack.requested` event (schemas/pack.requested.v2.json) as a JSON object."""
    return {
        "event_id": str(uuid.uuid4()), "type": "pack.requested", "version": VERSION,
        "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "pack_id": str(uuid.UUID(pack_id)) if pack_id else str(uuid.uuid4()), "user_id": user_id,
        "product": product.to_json(), "images": list(images),
        "aplus": (list(APLUS_KINDS) if aplus else []) if isinstance(aplus, bool) else list(aplus),
        "idempotency_key": None, "request_hash": None, "source": source,
    }


async def publish_pack_request(
    bootstrap_servers: str | None = None, *, user_id: str, product: Product, images: Sequence[str] = LISTING_KINDS,
    aplus: bool | Sequence[str] = False, pack_id: str | None = None, source: str | None = None, topic_prefix: str = "",
    producer: AIOKafkaProducer | None = None, **producer_options: Any,
) -> str:
    """Publish a pack request to `<topic_prefix>packs.requested` and return its pack id once
    Kafka has it (acks=all). The pipeline charges a pack id once, so choosing `pack_id` makes
    a retry of this call safe. `source` names the publishing service (credits bounds the
    requests waiting per source). Pass a started `producer` to reuse one, or the bootstrap
    servers and any AIOKafkaProducer options (security settings) for a producer of this call.
    The user must have an account with credits; follow the pack with `Packline.follow`."""
    event = pack_request(user_id, product, images, aplus, pack_id, source)
    value, key = json.dumps(event).encode(), user_id.encode()
    if producer is not None:
        await producer.send_and_wait(topic_prefix + TOPIC, value, key=key)
        return str(event["pack_id"])
    if bootstrap_servers is None:
        raise ValueError("publish_pack_request needs bootstrap_servers or a producer")
    own = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True, **producer_options)
    await own.start()
    try:
        await own.send_and_wait(topic_prefix + TOPIC, value, key=key)
    finally:
        await own.stop()
    return str(event["pack_id"])
