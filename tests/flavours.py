"""One test body for the sync and the asyncio client: a fixture opens clients of the flavour
its parameter names, and :func:`settle` takes what a call returned, awaiting it if need be."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from varstore.client import AsyncClient, Client, aconnect, connect

__all__ = ["FLAVOURS", "Opened", "client_opener", "settle"]

#: The fixture parameters (and test ids): ``[sync]`` and ``[async]``.
FLAVOURS = ["sync", "async"]

Opened = Client | AsyncClient


async def settle(result: Any) -> Any:
    """What a sync call returned, or what an async one returns once awaited."""
    return await result if inspect.isawaitable(result) else result


@asynccontextmanager
async def client_opener(
    flavour: str, defaults: Mapping[str, Any]
) -> AsyncIterator[Callable[..., Opened]]:
    """Yields ``open(address, **config)``, which connects a client of ``flavour`` with
    ``defaults`` under ``config``; closes every client it opened when the block ends."""
    made: list[Opened] = []

    def open_client(address: Any, **config: Any) -> Opened:
        settings = {**defaults, **config}
        client = connect(address, settings) if flavour == "sync" else aconnect(address, settings)
        made.append(client)
        return client

    try:
        yield open_client
    finally:
        for client in made:
            await settle(client.close())
