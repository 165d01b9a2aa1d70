"""Who acts in a command: a user, an API token, or the system (`None`), and how timelines show it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenActor:
    """An API token acting for an integration: the commands it may run and the streams it covers.

    Its stream scopes are its centers: "deliveries:gangnam" lets it run delivery commands there.
    """

    token_id: int
    name: str
    commands: frozenset[str]
    streams: tuple[str, ...]

    @classmethod
    def of(cls, token) -> TokenActor:
        """The actor for an `ApiToken` row."""
        return cls(
            token_id=token.pk,
            name=token.name,
            commands=frozenset(token.commands or ()),
            streams=tuple(token.streams or ()),
        )

    @property
    def label(self) -> str:
        return f"API token {self.name}"


def user_of(actor):
    """The user behind the actor, for `created_by`-style columns: None for tokens and the system."""
    return None if actor is None or isinstance(actor, TokenActor) else actor


def actor_label(actor, via: str = "") -> str:
    """Who acted, as the timeline shows it (cut to the column's 150 characters)."""
    if via:
        label = via
    elif actor is None:
        label = "system"
    elif isinstance(actor, TokenActor):
        label = actor.label
    else:
        label = actor.get_full_name() or actor.get_username()
    return label[:150]
