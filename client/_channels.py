"""Where the client makes its channels: the one place that decides how a channel to a
server is opened, so TLS, tokens and channel options are added once for :func:`connect`,
:func:`aconnect`, the client CLI (through :func:`connect`) and the asyncio client's
transfers.

A token travels as ``authorization: Bearer <token>`` call credentials, which gRPC sends
only over TLS or to a loopback address (local credentials): a token is never sent in clear
across a network.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc

__all__ = ["OPTIONS", "ChannelSecurity", "Pem", "open_aio_channel", "open_channel"]

#: gRPC channel arguments every channel the client opens gets.
OPTIONS: Final[tuple[tuple[str, Any], ...]] = ()

#: PEM bytes, or the path of a PEM file.
Pem = bytes | str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class ChannelSecurity:
    """How a channel proves who it talks to and who is calling.

    ``tls`` turns TLS on (with the system's roots unless ``root_certificates`` is given);
    giving root certificates or a client certificate turns it on too. ``certificate_chain``
    and ``private_key`` are the client's certificate for mTLS. ``token`` is a bearer token.
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    tls: bool = False

    @classmethod
    def of(
        cls,
        *,
        root_certificates: Pem | None = None,
        certificate_chain: Pem | None = None,
        private_key: Pem | None = None,
        token: str | None = None,
        tls: bool | None = None,
    ) -> ChannelSecurity:
        """Security from PEM bytes or paths of PEM files (read now).

        Raises:
            OSError: a file cannot be read.
            ValueError: a certificate without its key, or the other way round.
        """
        if (certificate_chain is None) != (private_key is None):
            raise ValueError("a client certificate and its private key go together")
        roots, chain, key = (_pem(p) for p in (root_certificates, certificate_chain, private_key))
        on = tls if tls is not None else any(p is not None for p in (roots, chain))
        return cls(roots, chain, key, token.strip() if token else None, on)

    def credentials(self, address: str) -> grpc.ChannelCredentials | None:
        """Credentials for a channel to ``address``; None for a plain channel.

        Raises:
            ValueError: a token for a non-loopback address without TLS.
        """
        if self.tls:
            transport = grpc.ssl_channel_credentials(
                self.root_certificates, self.private_key, self.certificate_chain
            )
        elif self.token:
            if not _loopback(address):
                raise ValueError(
                    f"refusing to send a token to {address} without TLS: give a CA file "
                    "(root_certificates / --ca-file) or use TLS"
                )
            transport = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        else:
            return None
        if not self.token:
            return transport
        return grpc.composite_channel_credentials(
            transport, grpc.access_token_call_credentials(self.token)
        )


def open_channel(address: str, security: ChannelSecurity | None = None) -> grpc.Channel:
    """A blocking channel to ``address`` ("host:port"); the caller closes it."""
    credentials = security.credentials(address) if security is not None else None
    if credentials is None:
        return grpc.insecure_channel(address, options=OPTIONS)
    return grpc.secure_channel(address, credentials, options=OPTIONS)


def open_aio_channel(address: str, security: ChannelSecurity | None = None) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` ("host:port"); the caller closes it."""
    credentials = security.credentials(address) if security is not None else None
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=OPTIONS)
    return grpc.aio.secure_channel(address, credentials, options=OPTIONS)


def _pem(value: Pem | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).expanduser().read_bytes()


def _loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]") if ":" in address else address
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
