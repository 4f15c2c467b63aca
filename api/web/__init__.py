"""The audit page: a read-only web view of sessions, the log, a variable's value over
time and any past moment, served by ``varstore serve --http HOST:PORT`` from the same
store as the gRPC API (see :mod:`varstore.api.web.app`)."""

from varstore.api.web.server import WebServer, start_web

__all__ = ["WebServer", "start_web"]
