"""Where the client makes its channels: the one place that decides how a channel to the
servers is opened, so addresses, TLS, tokens and channel options are handled once for
:func:`connect`, :func:`aconnect`, the client CLI (through :func:`connect`) and the
asyncio client's transfers.

Addresses (:data:`Address`): one ``host:port``, a comma-separated list of them
(``"h1:50051,h2:50051"``), or a sequence of them. One address is gRPC's target as it is:
a name is resolved by gRPC's DNS resolver, which uses every A/AAAA record (and looks
again when connections fail), and ``dns:///name:port`` or another gRPC target such as
``ipv4:a:p,b:p`` is passed through. Several addresses are resolved with
:func:`socket.getaddrinfo` when the channel is opened (a name's every record) into one
``ipv4:``/``ipv6:`` target, so a name in a list is not looked up again later: list IP
addresses, or give one DNS name, for servers whose addresses change. Every channel
balances its calls round robin over the servers that answer (``round_robin``), and
reconnects to a server that went away within :data:`MAX_RECONNECT_BACKOFF_MS`, so a
call that failed UNAVAILABLE because its server died is retried (by the client's
retries) on another one, and a server that comes back takes calls again.

With TLS, every server of a list must hold a certificate valid for the first address's
host (``grpc.ssl_target_name_override``): one certificate naming every server, or a
wildcard.

A token travels as ``authorization: Bearer <token>`` call credentials, which gRPC sends
only over TLS or to a loopback address (local credentials): a token is never sent in clear
across a network, so without TLS every address must be loopback.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc

__all__ = [
    "MAX_RECONNECT_BACKOFF_MS",
    "OPTIONS",
    "Address",
    "ChannelSecurity",
    "Pem",
    "Target",
    "address_text",
    "open_aio_channel",
    "open_channel",
    "target_of",
]

#: One address, several joined by ",", or a sequence of them.
Address = str | Sequence[str]

#: Most milliseconds between attempts to reconnect to a server that went away (gRPC's
#: default is two minutes): a server that comes back takes calls again this soon.
MAX_RECONNECT_BACKOFF_MS: Final = 2000

#: gRPC channel arguments every channel the client opens gets: round robin over every
#: address (a server that cannot be reached takes no calls, the others take them), quick
#: reconnection, and a keepalive ping on a quiet call (a watch) after a minute, so a
#: watch on a host that vanished without closing its connections fails (after 20 s
#: without an answer) and resumes elsewhere. (Servers allow one ping a 5 minutes with no
#: data sent; a watch's progress messages are data, so its pings are never too many.)
OPTIONS: Final[tuple[tuple[str, Any], ...]] = (
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    ("grpc.service_config_disable_resolution", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
)

#: Target schemes gRPC knows: an address starting with one is a gRPC target, used as is.
_SCHEMES: Final = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")

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


@dataclass(frozen=True, slots=True)
class Target:
    """What a channel to some addresses is opened on."""

    #: The addresses as given, for messages and ``client.address`` (joined by ",").
    addresses: tuple[str, ...]
    #: gRPC's target.
    target: str
    #: Channel arguments beyond :data:`OPTIONS`.
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def text(self) -> str:
        """The addresses joined by ","."""
        return ",".join(self.addresses)


def address_text(address: Address) -> str:
    """``address`` as the client shows it: the addresses joined by ",".

    Raises:
        ValueError: no address, or a list item that is not ``host:port``.
    """
    return ",".join(_addresses(address))


def target_of(address: Address, *, tls: bool = False) -> Target:
    """The gRPC target for ``address`` (see the module docstring); several addresses are
    resolved now.

    Raises:
        ValueError: no address, a list item that is not ``host:port``, or a name in a
            list that does not resolve.
    """
    addresses = _addresses(address)
    if len(addresses) == 1:
        return Target(addresses, addresses[0])
    endpoints: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = []
    for item in addresses:
        host, port = _host_port(item)
        for ip in _resolve(host, port):
            if (ip, port) not in endpoints:
                endpoints.append((ip, port))
    if all(ip.version == 4 for ip, _ in endpoints):
        target = "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in endpoints)
    else:
        target = "ipv6:" + ",".join(f"[{_as_ipv6(ip)}]:{port}" for ip, port in endpoints)
    # The call's authority (and, with TLS, the name certificates are checked against) is
    # the first address's, not the list's.
    options: list[tuple[str, Any]] = [("grpc.default_authority", addresses[0])]
    if tls:
        options.append(("grpc.ssl_target_name_override", _host_port(addresses[0])[0]))
    return Target(addresses, target, tuple(options))


def open_channel(address: Address, security: ChannelSecurity | None = None) -> grpc.Channel:
    """A blocking channel to ``address`` (see :data:`Address`); the caller closes it.

    Raises:
        ValueError: a bad address, or a token for a non-loopback address without TLS.
    """
    target = target_of(address, tls=security is not None and security.tls)
    credentials = security.credentials(target.text) if security is not None else None
    options = (*OPTIONS, *target.options)
    if credentials is None:
        return grpc.insecure_channel(target.target, options=options)
    return grpc.secure_channel(target.target, credentials, options=options)


def open_aio_channel(address: Address, security: ChannelSecurity | None = None) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` (see :data:`Address`); the caller closes it.

    Raises:
        ValueError: a bad address, or a token for a non-loopback address without TLS.
    """
    target = target_of(address, tls=security is not None and security.tls)
    credentials = security.credentials(target.text) if security is not None else None
    options = (*OPTIONS, *target.options)
    if credentials is None:
        return grpc.aio.insecure_channel(target.target, options=options)
    return grpc.aio.secure_channel(target.target, credentials, options=options)


def _addresses(address: Address) -> tuple[str, ...]:
    """The addresses ``address`` names: a gRPC target alone, else "host:port" items."""
    items = [address] if isinstance(address, str) else list(address)
    if len(items) == 1 and items[0].strip().startswith(_SCHEMES):
        return (items[0].strip(),)
    found = tuple(part.strip() for item in items for part in item.split(",") if part.strip())
    if not found:
        raise ValueError("no server address given")
    if len(found) > 1:
        for item in found:
            _host_port(item)
    return found


def _host_port(item: str) -> tuple[str, int]:
    """An address of a list as host and port (``[v6]:port`` for an IPv6 address)."""
    host, colon, port = item.rpartition(":")
    if item.startswith(_SCHEMES) or not colon or not port.isdigit() or not host:
        raise ValueError(f"server address {item!r} in a list must be HOST:PORT")
    return host.strip("[]"), int(port)


def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address ``host`` resolves to (itself for an IP address), in DNS order."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        records = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as problem:
        raise ValueError(f"cannot resolve server {host!r}: {problem}") from None
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for _family, _type, _proto, _name, sockaddr in records:
        ip = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if ip not in found:
            found.append(ip)
    return found


def _as_ipv6(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """``ip`` as IPv6 (an IPv4 address mapped, for a target that mixes both)."""
    return ip if isinstance(ip, ipaddress.IPv6Address) else ipaddress.IPv6Address(f"::ffff:{ip}")


def _pem(value: Pem | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).expanduser().read_bytes()


def _loopback(address: str) -> bool:
    """Whether every server ``address`` names is on this machine (a name other than
    localhost counts as remote, whatever it resolves to)."""
    return all(_loopback_host(host) for host in _hosts(address))


def _hosts(address: str) -> list[str]:
    """The hosts of ``address``: one or several "host:port" items, or a gRPC target."""
    text = address.strip()
    if text.startswith(("ipv4:", "ipv6:")):
        items = text.partition(":")[2].split(",")
    elif text.startswith("dns:"):
        rest = text[len("dns:") :]
        items = [rest.removeprefix("//").partition("/")[2] if rest.startswith("//") else rest]
    elif text.startswith(_SCHEMES):
        return [text]  # unix sockets and the like: not loopback TCP
    else:
        items = text.split(",")
    return [
        item.strip().rpartition(":")[0].strip("[]") if ":" in item else item.strip()
        for item in items
    ]


def _loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
