"""Opaque page tokens (AIP-158) that keep pages stable while the log grows.

A token says where the next page starts (the last position, or the last key, already
returned) and, for a range of a log, the end the first page was pinned to, as etcd pins a
range to a revision: later pages never show what was written after the first one, and a
write between two pages neither breaks paging nor repeats or drops an item.

Every token is bound to the request that made it (a fingerprint of its parameters,
page_size excepted), so a token replayed against another request is INVALID_ARGUMENT.

Format (url-safe base64 of compact JSON; opaque to callers, documented for maintainers)::

    {"v": 1, "q": "<16 hex digits of sha256(request)>", "l": <last position>, "e": <pinned end>}
    {"v": 1, "q": "<fingerprint>", "k": "<last key>"}

Decoding trusts nothing: the token's length is bounded before decoding, JSON floats,
NaN/Infinity and big or negative integers are refused, and any shape other than the one
above is INVALID_ARGUMENT, never an internal error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import NoReturn

from varstore.types import ValidationError

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "MAX_TOKEN_CHARS",
    "PositionCursor",
    "decode_key_token",
    "decode_position_token",
    "encode_key_token",
    "encode_position_token",
    "fingerprint",
    "page_size",
]

#: Items per page when the request asks for 0.
DEFAULT_PAGE_SIZE = 100
#: Most items per page by default (``Limits.max_page_size``); a larger page_size is
#: served as the maximum.
MAX_PAGE_SIZE = 1000
#: Longest page token accepted; the tokens this module makes are under 200 characters.
MAX_TOKEN_CHARS = 1024
#: Largest position or key a token may carry (int64, as on the wire).
_MAX_INT = 2**63 - 1
_MAX_KEY_CHARS = 512
_VERSION = 1


@dataclass(frozen=True, slots=True)
class PositionCursor:
    """Where paging through positions stands: ``last``, the position of the last item
    returned, and ``end``, the position the first page was pinned to (later pages never
    go past it)."""

    last: int
    end: int


def page_size(asked: int, maximum: int = MAX_PAGE_SIZE) -> int:
    """The page size to use: 0 means the default (or ``maximum``, if smaller); a larger
    one is served as ``maximum`` (the server's ``max_page_size``), as AIP-158 asks, so no
    page is unbounded.

    Raises:
        ValidationError: a negative page size.
    """
    if asked < 0:
        raise ValidationError(
            f"page_size must be 0 or more, not {asked}",
            violations={"page_size": "must be 0 or more"},
        )
    return min(asked or DEFAULT_PAGE_SIZE, maximum)


def fingerprint(*parameters: str | int | bool | None) -> str:
    """A short digest of a request's parameters (its kind first), binding tokens to it."""
    canonical = json.dumps(list(parameters), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_position_token(request: str, cursor: PositionCursor) -> str:
    """The token for the page after ``cursor`` of the request fingerprinted ``request``."""
    return _encode({"v": _VERSION, "q": request, "l": cursor.last, "e": cursor.end})


def decode_position_token(request: str, token: str) -> PositionCursor | None:
    """The cursor a token stands for, None for no token (the first page).

    Raises:
        ValidationError: the token is malformed, or was made for another request.
    """
    data = _decode(request, token, {"l", "e"})
    if data is None:
        return None
    last, end = _integer(data["l"]), _integer(data["e"])
    if last > end + 1:
        _refuse()
    return PositionCursor(last, end)


def encode_key_token(request: str, last_key: str) -> str:
    """The token for the page after ``last_key`` (keyset paging)."""
    return _encode({"v": _VERSION, "q": request, "k": last_key})


def decode_key_token(request: str, token: str) -> str | None:
    """The last key a token stands for, None for no token (the first page).

    Raises:
        ValidationError: the token is malformed, or was made for another request.
    """
    data = _decode(request, token, {"k"})
    if data is None:
        return None
    key = data["k"]
    if not isinstance(key, str) or len(key) > _MAX_KEY_CHARS:
        _refuse()
    return key


def _encode(data: dict[str, object]) -> str:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=True)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(request: str, token: str, fields: set[str]) -> dict[str, object] | None:
    if not token:
        return None
    if len(token) > MAX_TOKEN_CHARS:
        _refuse()
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        data = json.loads(
            raw.decode("utf-8"),
            parse_float=_no_float,
            parse_constant=_no_float,
            parse_int=_small_int,
        )
    except (binascii.Error, ValueError, RecursionError):
        _refuse()
    if not isinstance(data, dict) or set(data) != {"v", "q", *fields}:
        _refuse()
    if data["v"] != _VERSION or not isinstance(data["q"], str):
        _refuse()
    if data["q"] != request:
        raise ValidationError(
            "page_token belongs to a different request",
            violations={"page_token": "made for a request with other parameters"},
        )
    return data


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_INT:
        _refuse()
    return value


def _no_float(text: str) -> NoReturn:
    raise ValueError(f"not an integer: {text[:20]}")


def _small_int(text: str) -> int:
    if len(text) > 20:  # decided before converting: int() of a huge string costs time
        raise ValueError("integer too long")
    return int(text)


def _refuse() -> NoReturn:
    raise ValidationError(
        "page_token is not a token this server made",
        violations={"page_token": "not a token this server made"},
    ) from None
