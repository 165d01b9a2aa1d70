"""The chat streams, registered with `realtime` when the app is ready (rules in `chat.access`).

`chat:<center>` is a center's room; `dm:<a>-<b>` the direct conversation of users a < b. Both are
logged streams whose snapshot is their latest messages from PostgreSQL (not from the event
history, which is pruned after EVENT_RETENTION_HOURS), and a client's `publish` of a
`chat.message` on them is stored by `chat.services.post_message`.
"""

from chat import access, selectors, services
from realtime import registry


def room_snapshot(room: str) -> list[dict]:
    return selectors.page_frames(f"chat:{room}", before=None)[0]


def conversation_snapshot(room: str) -> list[dict]:
    return selectors.page_frames(f"dm:{room}", before=None)[0]


def register() -> None:
    registry.register(
        registry.StreamKind(
            "chat",
            rooms="center",
            may_subscribe=access.room_readers,
            may_publish=access.room_writers,
            snapshot=room_snapshot,
            publish=services.post_message,
        )
    )
    registry.register(
        registry.StreamKind(
            "dm",
            rooms="pair",
            may_subscribe=access.conversation_member,
            may_publish=access.conversation_member,
            snapshot=conversation_snapshot,
            publish=services.post_message,
            users_only=True,  # a conversation is its two users' own: no integration reads it
        )
    )
