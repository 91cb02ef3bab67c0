"""What a pack contains and costs. The api quotes it, credits charges it: one definition."""

from __future__ import annotations

from collections.abc import Sequence

from shared.events import APLUS_KINDS, ImageSpec

# A+ modules are wide banners; listing images are square marketplace tiles.
APLUS_SIZE = (1536, 1024)
LISTING_SIZE = (1024, 1024)


def plan_pack(images: Sequence[str], aplus: bool, price_listing: int, price_aplus: int) -> list[ImageSpec]:
    specs = [
        ImageSpec(image_id=kind, kind=kind, cost=price_listing, width=LISTING_SIZE[0], height=LISTING_SIZE[1])
        for kind in dict.fromkeys(images)
    ]
    if aplus:
        specs += [
            ImageSpec(image_id=kind, kind=kind, cost=price_aplus, width=APLUS_SIZE[0], height=APLUS_SIZE[1])
            for kind in APLUS_KINDS
        ]
    return specs


def pack_cost(specs: Sequence[ImageSpec]) -> int:
    return sum(s.cost for s in specs)
