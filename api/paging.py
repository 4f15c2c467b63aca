"""Opaque page tokens (AIP-158): where the next page starts, bound to the request that
made it, so a token cannot be replayed against a different query."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from varstore.types import ValidationError

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "decode_token", "encode_token", "page_size"]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(asked: int) -> int:
    """The page size to use: 0 means the default; never above the maximum."""
    if asked < 0:
        raise ValidationError(f"page_size must be 0 or more, not {asked}")
    return min(asked or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _fingerprint(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()[:16]


def encode_token(query: str, offset: int) -> str:
    """A token for the page that starts at ``offset`` of the results of ``query``."""
    data = json.dumps({"q": _fingerprint(query), "o": offset}).encode()
    return base64.urlsafe_b64encode(data).decode()


def decode_token(query: str, token: str) -> int:
    """The offset a token stands for (0 for no token); INVALID_ARGUMENT for a token that
    is malformed or was made for another query."""
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset = int(data["o"])
        fingerprint = data["q"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise ValidationError("page_token is not a token this server made") from None
    if fingerprint != _fingerprint(query) or offset < 0:
        raise ValidationError("page_token belongs to a different request")
    return offset
