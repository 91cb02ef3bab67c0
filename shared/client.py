"""A typed helper for services that publish pack requests straight to Kafka instead of
calling the api (docs/contract.md, "Publishing straight to Kafka")."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from shared.events import APLUS_KINDS, LISTING_KINDS, AplusKind, ImageKind, PackRequested, Product
from shared.kafka import Outgoing, Publisher
from shared.topics import PACKS_REQUESTED, Topics


async def request_pack(
    publisher: Publisher, user_id: str, product: Product, images: Sequence[ImageKind] = LISTING_KINDS,
    aplus: bool | Sequence[AplusKind] = False, pack_id: str | None = None, topics: Topics | None = None, source: str | None = None,
) -> str:
    """Publish a pack.requested (key user_id) and return its pack id. Follow the pack on
    `packs.status` (key pack_id) or over SSE. Choosing the pack id yourself makes a retry
    of this call safe: the pipeline charges a pack id once. `source` names the publishing
    service: credits bounds how many of its requests may wait. `aplus`: the A+ modules to
    add (`True`: all four)."""
    topics = topics or Topics()
    event = PackRequested(
        pack_id=uuid.UUID(pack_id) if pack_id else uuid.uuid4(), user_id=user_id, product=product,
        images=list(images), aplus=(list(APLUS_KINDS) if aplus else []) if isinstance(aplus, bool) else list(aplus),
        source=source,
    )
    await publisher.send([Outgoing.of(topics.name(PACKS_REQUESTED), event, user_id)])
    return str(event.pack_id)
