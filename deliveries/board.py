"""What the dispatcher board shows, read consistently: a row window, the counts and the stream head.

The page and every window refresh carry the `deliveries:<center>` head read in the same database
snapshot as the rows, so the real-time client resumes exactly after what is on screen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from django.utils import timezone

from deliveries.models import Delivery
from deliveries.selectors import BoardFilter, board_counts, board_window, late_delivery_ids
from realtime import outbox
from realtime.snapshots import in_one_snapshot

WINDOW_MAX = 200


ROW_HEIGHT = 36  # px; the virtual list places windows by a fixed row height


@dataclass(frozen=True)
class BoardWindow:
    rows: list
    counts: dict[str, int]
    late_ids: list[int]
    offset: int
    epoch: str
    head: int
    now: object

    @property
    def counts_json(self) -> str:
        return json.dumps(self.counts | {"late_ids": self.late_ids})

    @property
    def chip_counts(self) -> list[tuple[str, int]]:
        """The counts the board's chips show, by name: each status, late, needing attention."""
        return [(name, self.counts[name]) for name in (*Delivery.Status.values, "late", "attention")]

    @property
    def top_px(self) -> int:
        return self.offset * ROW_HEIGHT

    @property
    def height_px(self) -> int:
        return max(self.counts["total"], 1) * ROW_HEIGHT


def read_board_window(*, center_code: str, board: BoardFilter, offset: int, limit: int) -> BoardWindow:
    limit = max(1, min(limit, WINDOW_MAX))
    offset = max(0, offset)

    outbox.stream_position(f"deliveries:{center_code}")  # outside the snapshot, as in read_snapshot

    def read():
        now = timezone.now()
        epoch, head = outbox.stream_position(f"deliveries:{center_code}")
        rows = board_window(center_code=center_code, board=board, offset=offset, limit=limit, now=now)
        counts = board_counts(center_code=center_code, board=board, now=now)
        late_ids = late_delivery_ids(center_code=center_code, now=now)
        return BoardWindow(rows=rows, counts=counts, late_ids=late_ids, offset=offset, epoch=epoch, head=head, now=now)

    return in_one_snapshot(read)
