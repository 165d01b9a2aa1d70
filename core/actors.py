"""Who acts in a command, as timelines and `changed_by` show it."""

from __future__ import annotations


def actor_label(actor, via: str = "") -> str:
    """Who acted, as the timeline shows it (cut to the column's 150 characters)."""
    if via:
        label = via
    elif actor is None:
        label = "system"
    else:
        label = actor.get_full_name() or actor.get_username()
    return label[:150]
