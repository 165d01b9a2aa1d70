"""Strict parsing of what clients send: JSON bodies and frames, and numbers in query strings.

Python accepts input that something further on refuses, far from the input and as a 500 or an
`internal` error: JSON with lone surrogates ("\\ud800" is valid JSON but not Unicode, so neither
UTF-8 nor PostgreSQL's jsonb takes it), NaN and Infinity, numbers no double holds (a 401-digit
integer), nesting deep enough to exhaust the stack; query numbers that `str.isdigit()` accepts
and `int()` refuses ("²"). Every entry point parses through here and answers a refusal with a 4xx
or `bad_request`.
"""

from __future__ import annotations

import json
import math
import re

MAX_DEPTH = 32  # no message of the protocol comes near; the stack and jsonb are safe far beyond
MAX_INTEGER = 2**53 - 1  # the integers every JSON client (JavaScript's numbers) holds exactly
MAX_DIGITS = 18  # a number of 18 digits always fits PostgreSQL's bigint
_ASCII_DIGITS = re.compile(r"[0-9]+")


class StrictInputError(ValueError):
    """Input that parses in Python but must not go further; the message says why, for the client."""


def _refuse_constant(name: str):
    raise StrictInputError(f"{name} is not a JSON number.")


def parse_json(text: str | bytes) -> object:
    """Parse JSON syntax, refusing NaN/Infinity and nesting too deep for the parser; see `check_json`.

    Raises ValueError for text that is not JSON at all, StrictInputError for the refusals.
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise StrictInputError(f"JSON may be nested at most {MAX_DEPTH} levels deep.") from None


def check_json(value: object) -> None:
    """Refuse a parsed JSON value that is nested too deep, has a lone surrogate or a number out of range.

    Iterative, so a deep value cannot exhaust the stack here either.
    """
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            if depth > MAX_DEPTH:
                raise StrictInputError(f"JSON may be nested at most {MAX_DEPTH} levels deep.")
            for key, child in item.items():
                _check_text(key)
                pending.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > MAX_DEPTH:
                raise StrictInputError(f"JSON may be nested at most {MAX_DEPTH} levels deep.")
            pending.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            _check_text(item)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if abs(item) > MAX_INTEGER:
                raise StrictInputError(f"Integers must be between -{MAX_INTEGER} and {MAX_INTEGER}.")
        elif isinstance(item, float) and not math.isfinite(item):
            raise StrictInputError("Numbers must be finite (this one overflows a double).")


def is_valid_text(text: str) -> bool:
    """Whether `text` is valid Unicode: it has no lone surrogate, so UTF-8 and jsonb take it."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_text(text: str) -> None:
    if not is_valid_text(text):
        raise StrictInputError("Strings must be valid Unicode (a lone surrogate is not).")


def loads(text: str | bytes) -> object:
    """Parse strict JSON: `parse_json`, then `check_json`. Raises ValueError (StrictInputError for refusals)."""
    value = parse_json(text)
    check_json(value)
    return value


def whole_number(text: str, *, maximum: int) -> int:
    """Parse a query-string number of ASCII digits (not "²", which `isdigit()` takes), capped at `maximum`.

    Raises StrictInputError for anything else. `maximum` must fit PostgreSQL's bigint.
    """
    if not _ASCII_DIGITS.fullmatch(text):
        raise StrictInputError(f"{text[:20]!r} is not a whole number.")
    digits = text.lstrip("0")
    return maximum if len(digits) > MAX_DIGITS else min(int(digits or "0"), maximum)
