"""Server → client control frames of protocol §3, encoded once as compact JSON text."""

import json


def dumps(frame: dict) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def subscribed(*, id, stream: str, epoch: str | None, head: int | None, recovered: bool) -> str:
    frame = {"type": "subscribed", "id": id, "stream": stream, "recovered": recovered}
    if head is not None:  # ephemeral streams have no epoch or head
        frame |= {"epoch": epoch, "head": head}
    return dumps(frame)


def reset(*, stream: str, epoch: str, head: int, reason: str) -> str:
    return dumps({"type": "reset", "stream": stream, "epoch": epoch, "head": head, "reason": reason})


def error(*, id, code: str, message: str) -> str:
    return dumps({"type": "error", "id": id, "code": code, "message": message})
