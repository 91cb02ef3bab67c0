"""What a pack contains and costs, and the DRAFT that says so. The api quotes it, credits
charges it: one definition."""

from __future__ import annotations

from collections.abc import Sequence

from shared.events import APLUS_KINDS, ImageEntry, ImageSpec, PackRequested, PackState, PackStatus, stable_id

# A+ modules are wide banners; listing images are square marketplace tiles.
APLUS_SIZE = (1536, 1024)
LISTING_SIZE = (1024, 1024)


def plan_pack(images: Sequence[str], aplus: Sequence[str], price_listing: int, price_aplus: int) -> list[ImageSpec]:
    """The listing images asked for, then the A+ modules asked for (each priced on its own),
    in the catalogue's order, each once."""
    listing = [spec(kind, price_listing) for kind in dict.fromkeys(images)]
    return listing + [spec(kind, price_aplus) for kind in APLUS_KINDS if kind in aplus]


def spec(kind: str, cost: int) -> ImageSpec:
    width, height = APLUS_SIZE if kind in APLUS_KINDS else LISTING_SIZE
    return ImageSpec(image_id=kind, kind=kind, cost=cost, width=width, height=height)


def pack_cost(specs: Sequence[ImageSpec]) -> int:
    return sum(s.cost for s in specs)


def draft(request: PackRequested, specs: Sequence[ImageSpec]) -> PackStatus:
    """A requested pack's first status. The api publishes it with the request, so the pack
    is visible at once; credits publishes it again before PROCESSING, for requests that
    skipped the api. The event id is the same, so readers keep whichever lands first, and
    credits' own copy is always ahead of PROCESSING in the pack's partition."""
    return PackStatus(
        event_id=stable_id(request.pack_id, "status", PackState.DRAFT), pack_id=request.pack_id,
        user_id=request.user_id, status=PackState.DRAFT, cost=pack_cost(specs),
        images=[ImageEntry(image_id=s.image_id, kind=s.kind) for s in specs], occurred_at=request.occurred_at,
    )
