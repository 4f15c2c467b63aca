"""The Python client (SessionContext, sync and asyncio) arrives with the client issue."""
