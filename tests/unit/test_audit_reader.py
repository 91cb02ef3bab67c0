"""`packline audit` and the chaos run read packs.status as its readers do: a redelivered
pack request makes credits send the pack's DRAFT and PROCESSING again under their first
event ids, even after the pack settled, and those copies do not undo its terminal status."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from services.cli.audit import pack_log
from services.credits import handlers
from services.credits.ledger import Ledger
from shared.events import ImageCompleted, PackRequested, Product, decode
from shared.topics import Topics

T = Topics("x.")


@dataclass
class Record:
    value: bytes


def test_a_settled_pack_stays_settled_when_its_request_is_read_again(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'credits.db'}")
    ledger.create_schema()
    ledger.create_account("alice", 10)
    request = PackRequested(pack_id=uuid.uuid4(), user_id="alice", product=Product(name="Mug"), images=["main", "detail"])
    log = handlers.on_packs_requested([(request, None)], ledger, T, 1, 2)
    done = [ImageCompleted(pack_id=request.pack_id, user_id="alice", image_id=i, kind=i, url=f"u/{i}", attempts=1, cost=1)
            for i in ("main", "detail")]
    log += handlers.on_image_results(done, ledger, T)
    again = handlers.on_packs_requested([(request, None)], ledger, T, 1, 2)  # read again after a restart
    statuses = [m for m in log + again if m.topic == T.packs_status]
    copies = [decode(m.value) for m in again if m.topic == T.packs_status]
    assert [c.status for c in copies] == ["DRAFT", "PROCESSING"]  # type: ignore[attr-defined]
    assert {c.event_id for c in copies} <= {decode(m.value).event_id for m in log}  # copies, not new events
    last, _ = pack_log([Record(m.value) for m in statuses])  # type: ignore[misc]
    assert last == {str(request.pack_id): "COMPLETED"}
