"""Refusals a command can raise; API, pages and admin turn them into clear messages (409)."""

from __future__ import annotations


class CommandRefused(Exception):
    """A command that cannot run against the entity's current state; nothing was changed."""

    code = "refused"

    def __init__(self, message: str, *, entity=None, changed_by: dict | None = None):
        super().__init__(message)
        self.message = message
        self.entity = entity
        self.changed_by = changed_by


class InvalidTransition(CommandRefused):
    """The command is not allowed in the entity's current status."""

    code = "invalid_transition"


class StaleVersion(CommandRefused):
    """The entity changed since the version the user was looking at."""

    code = "stale_version"
