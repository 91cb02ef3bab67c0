"""Cancel and regenerate: the owner's changes to a pack, decided by credits.

The api puts the command in the pack's log (`images.results`, beside its image outcomes, so
their order is the log's) and waits for credits' answer on `packs.replies`, which every api
instance follows from its end (`PackReplies`); the answer becomes the HTTP status."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from services.api.deps import PublisherDep, SettingsDep, WriterKey, caught_up
from services.api.settings import Settings
from shared.consumer import EventFeed
from shared.errors import BrokerUnavailable
from shared.events import AplusKind, ImageKind, PackCancel, PackCommandResult, PackRegenerate
from shared.http import unprocessable
from shared.kafka import KafkaConfig, Outgoing, Publisher

router = APIRouter()
STATUSES = {"not_found": 404, "conflict": 409, "insufficient_credits": 402}


class PackReplies(EventFeed[PackCommandResult]):
    """Credits' answers, matched to the commands this instance is waiting on."""

    name = "packs-replies"

    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        super().__init__(kafka, topic, "packline-api-replies", (PackCommandResult,))
        self.waiting: dict[str, asyncio.Future[PackCommandResult]] = {}

    def apply(self, event: PackCommandResult) -> None:
        waiter = self.waiting.get(event.command_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(event)

    async def ask(self, publisher: Publisher, command: PackCancel | PackRegenerate, topic: str, timeout_s: float) -> PackCommandResult:
        """Send the command and wait for its answer (registered first: it cannot be missed)."""
        waiter: asyncio.Future[PackCommandResult] = asyncio.get_running_loop().create_future()
        self.waiting[command.event_id] = waiter
        try:
            await publisher.send([Outgoing.of(topic, command, command.pack_id)])
            return await asyncio.wait_for(waiter, timeout_s)
        finally:
            del self.waiting[command.event_id]


def get_replies(request: Request) -> PackReplies:
    return caught_up(request, "replies", PackReplies, "credits' answers")


RepliesDep = Annotated[PackReplies, Depends(get_replies)]


class RegenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    images: Annotated[list[ImageKind | AplusKind], Field(min_length=1, max_length=10)] | None = None


class ChangeAccepted(BaseModel):
    pack_id: str
    status: str
    run: int | None = None
    status_url: str
    stream_url: str


@router.post("/v1/packs/{pack_id}/cancel", status_code=202, response_model=ChangeAccepted,
             responses={404: {"description": "no such pack (or another user's)"}, 409: {"description": "the pack is finished"}})
async def cancel(pack_id: str, key: WriterKey, settings: SettingsDep, publisher: PublisherDep, replies: RepliesDep) -> ChangeAccepted:
    """Stop a pack: images not started are never made, calls in flight are abandoned, and
    every image not delivered is refunded. Images delivered before the cancel stay charged."""
    command = PackCancel(pack_id=_pack_uuid(pack_id), user_id=key.user_id)
    reply = await _decide(replies, publisher, command, settings)
    return _accepted(reply, "CANCELLED", settings)


@router.post("/v1/packs/{pack_id}/regenerate", status_code=202, response_model=ChangeAccepted,
             responses={402: {"description": "not enough credits"}, 404: {"description": "no such pack (or another user's)"},
                        409: {"description": "the pack is not PARTIAL or FAILED, or an image named is not failed"},
                        422: {"description": "an image the pack does not have"}})
async def regenerate(
    pack_id: str, key: WriterKey, settings: SettingsDep, publisher: PublisherDep, replies: RepliesDep,
    body: RegenerateBody | None = None,
) -> ChangeAccepted:
    """Make a PARTIAL or FAILED pack's failed images (or the failed ones named) again, as a
    new run of the same pack, paid for like a new pack and charged only when delivered."""
    images = list(body.images) if body and body.images else None
    command = PackRegenerate(pack_id=_pack_uuid(pack_id), user_id=key.user_id, images=images)
    reply = await _decide(replies, publisher, command, settings)
    return _accepted(reply, "PROCESSING", settings)


async def _decide(
    replies: PackReplies, publisher: Publisher, command: PackCancel | PackRegenerate, settings: Settings,
) -> PackCommandResult:
    try:
        reply = await replies.ask(publisher, command, settings.topics.images_results, settings.api_change_timeout_s)
    except BrokerUnavailable as exc:
        raise HTTPException(503, "the pack's log is unavailable; nothing was changed, try again",
                            headers={"Retry-After": "5"}) from exc
    except TimeoutError as exc:
        raise HTTPException(503, "credits has not answered yet; the change may still be applied: "
                                 "ask again (a cancel is answered as done once it is)", headers={"Retry-After": "5"}) from exc
    if reply.outcome == "unknown_images":
        raise unprocessable(["body", "images"], reply.message or reply.outcome)
    if reply.outcome != "accepted":
        raise HTTPException(STATUSES[reply.outcome], reply.message or reply.outcome)
    return reply


def _accepted(reply: PackCommandResult, status: str, settings: Settings) -> ChangeAccepted:
    pack_id = str(reply.pack_id)
    base = settings.notifier_public_url.rstrip("/")
    return ChangeAccepted(pack_id=pack_id, status=status, run=reply.run, status_url=f"{base}/v1/packs/{pack_id}",
                          stream_url=f"{base}/v1/packs/{pack_id}/events")


def _pack_uuid(pack_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(pack_id)
    except ValueError as exc:
        raise HTTPException(404, "no such pack") from exc
