"""Where the client makes its channels: the one place that decides how a channel to a
server is opened, so TLS, tokens and channel options are added once for :func:`connect`,
:func:`aconnect`, the client CLI (through :func:`connect`) and the asyncio client's
transfers."""

from __future__ import annotations

from typing import Any, Final

import grpc

__all__ = ["OPTIONS", "open_aio_channel", "open_channel"]

#: gRPC channel arguments every channel the client opens gets.
OPTIONS: Final[tuple[tuple[str, Any], ...]] = ()


def open_channel(address: str) -> grpc.Channel:
    """A blocking channel to ``address`` ("host:port"); the caller closes it."""
    return grpc.insecure_channel(address, options=OPTIONS)


def open_aio_channel(address: str) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` ("host:port"); the caller closes it."""
    return grpc.aio.insecure_channel(address, options=OPTIONS)
