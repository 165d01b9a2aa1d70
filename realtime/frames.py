"""Server → client control frames of protocol §3, encoded once as compact JSON text."""

import json

from core import strict_input


def dumps(frame: dict) -> str:
    """Encode a frame as JSON text the server can always send as UTF-8.

    A lone surrogate (in text taken from a client) cannot be encoded: sending it would fail inside
    the server's `send` and silently stop the socket's outgoing side. Such a frame is written with
    `\\uXXXX` escapes instead, which every JSON parser reads back as the same string.
    """
    text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
    if not strict_input.is_valid_text(text):
        text = json.dumps(frame, separators=(",", ":"))
    return text


def subscribed(*, id, stream: str, epoch: str | None, head: int | None, recovered: bool) -> str:
    frame = {"type": "subscribed", "id": id, "stream": stream, "recovered": recovered}
    if head is not None:  # ephemeral streams have no epoch or head
        frame |= {"epoch": epoch, "head": head}
    return dumps(frame)


def reset(*, stream: str, epoch: str, head: int, reason: str) -> str:
    return dumps({"type": "reset", "stream": stream, "epoch": epoch, "head": head, "reason": reason})


def error(*, id, code: str, message: str) -> str:
    return dumps({"type": "error", "id": id, "code": code, "message": message})
