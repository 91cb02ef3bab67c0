"""The client's pack.requested is the server's: it decodes as the current model, with the same
fields and values that shared.client.request_pack would publish."""

from __future__ import annotations

import json
import uuid

import jsonschema
import pytest
from packline_client import Product, pack_request
from packline_client.kafka import TOPIC

from shared.events import PackRequested, decode, json_schema
from shared.events import Product as ServerProduct
from shared.topics import PACKS_REQUESTED


@pytest.mark.parametrize("aplus", [False, True, ["aplus_story"]])
def test_the_client_publishes_what_the_model_publishes(aplus: bool | list[str]) -> None:
    pack_id = str(uuid.uuid4())
    product = Product("Lamp", "warm light", ["dimmable"], "studio")
    wire = pack_request("alice", product, ["main", "detail"], aplus, pack_id, source="shop-sync")
    raw = json.dumps(wire).encode()
    jsonschema.validate(json.loads(raw), json_schema(PackRequested))
    event = decode(raw, PACKS_REQUESTED.events)
    server = PackRequested(
        event_id=wire["event_id"], occurred_at=event.occurred_at, pack_id=uuid.UUID(pack_id), user_id="alice",
        product=ServerProduct(name="Lamp", description="warm light", features=["dimmable"], style="studio"),
        images=["main", "detail"], aplus=event.aplus, source="shop-sync",
    )
    assert event == server
    assert json.loads(server.encode()).keys() == wire.keys()
    assert event.aplus == (["aplus_banner", "aplus_features", "aplus_comparison", "aplus_story"] if aplus is True else aplus or [])
    assert TOPIC == PACKS_REQUESTED.name and wire["version"] == PackRequested.VERSION


def test_a_pack_id_is_chosen_when_none_is_given() -> None:
    first, second = pack_request("bob", Product("Mug")), pack_request("bob", Product("Mug"))
    assert first["pack_id"] != second["pack_id"] and uuid.UUID(first["pack_id"])
    assert decode(json.dumps(first).encode()).images == ["main", "lifestyle", "infographic", "detail", "scale", "packaging"]
