"""The server's one configuration: what ``varstore serve`` was told by its flags and
environment, read and checked once, before anything opens.

Secrets (TLS key, admin token, token secret) are read from files or the environment into
fields that never show in a repr or a log. Every problem is a :class:`ConfigError` whose
message is one line for the operator.

The exposure rule: a server without TLS listens on a loopback address only (and says so);
any other address needs ``insecure=True`` (``--insecure``), whether or not it has tokens,
since a token sent in clear can be read off the network.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import grpc

from varstore.api.auth import Tokens
from varstore.api.limits import Limits

__all__ = [
    "DEFAULT_DB",
    "DEFAULT_LISTEN",
    "MIN_SECRET_LENGTH",
    "ConfigError",
    "Security",
    "ServerConfig",
    "TlsFiles",
    "check_exposure",
    "check_http_exposure",
    "is_loopback",
    "split_address",
]

DEFAULT_DB = "./varstore.db"
DEFAULT_LISTEN = "127.0.0.1:50051"
#: Shortest admin token or token secret accepted, in characters (bytes for a secret).
MIN_SECRET_LENGTH = 16


class ConfigError(ValueError):
    """A configuration the server refuses to start with; the message is one line."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The server's certificate chain and key (PEM), and the CA that client certificates
    must chain to when mTLS is on."""

    certificate_chain: bytes
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials: TLS, and mTLS (a verified client certificate required)
        when ``client_ca`` is set."""
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


@dataclass(frozen=True, slots=True)
class Security:
    """TLS and tokens. Tokens are on when an admin token is set; session tokens are keyed
    by ``token_secret`` (derived from the admin token when none is given)."""

    tls: TlsFiles | None = None
    admin_token: str | None = field(default=None, repr=False)
    token_secret: bytes | None = field(default=None, repr=False)

    def tokens(self) -> Tokens | None:
        """The server's tokens, or None when it has none."""
        if not self.admin_token:
            return None
        return Tokens(self.admin_token, self.token_secret)

    def describe(self) -> str:
        """How the server is protected, for its start-up line."""
        if self.tls is None:
            transport = "no TLS"
        else:
            transport = "mTLS" if self.tls.client_ca is not None else "TLS"
        return f"{transport}, {'tokens' if self.admin_token else 'no tokens'}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``varstore serve`` runs with."""

    db: str = DEFAULT_DB
    listen: str = DEFAULT_LISTEN
    sync: Literal["full", "normal"] = "full"
    snapshot_every: int = 1000
    checkpoint_every: int = 10_000
    #: Seconds between reads of a shared log when no notice of another server's commit comes.
    poll_interval: float = 1.0
    limits: Limits = field(default_factory=Limits)
    security: Security = field(default_factory=Security)
    #: Listen on a non-loopback address without TLS.
    insecure: bool = False
    #: HOST:PORT of the Prometheus metrics endpoint, or None for none.
    metrics: str | None = None
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    #: HOST:PORT of the audit web page, or None for none.
    http: str | None = None

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, environ: Mapping[str, str] = os.environ, *, limits: Limits
    ) -> ServerConfig:
        """The configuration the serve command's flags (and the environment) give; reads
        the TLS files, the admin token and the token secret.

        Raises:
            ConfigError: a file cannot be read, a flag needs another, a secret is short.
        """
        if bool(args.tls_cert) != bool(args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        if args.tls_client_ca and not args.tls_cert:
            raise ConfigError("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
        tls = None
        if args.tls_cert:
            tls = TlsFiles(
                _read(args.tls_cert, "--tls-cert"),
                _read(args.tls_key, "--tls-key"),
                _read(args.tls_client_ca, "--tls-client-ca") if args.tls_client_ca else None,
            )
            _check_tls_files(args.tls_cert, args.tls_key, args.tls_client_ca)
        admin_token = (
            _read(args.admin_token_file, "--admin-token-file").decode(errors="replace").strip()
            if args.admin_token_file
            else environ.get("VARSTORE_ADMIN_TOKEN", "").strip()
        )
        secret = (
            _read(args.token_secret_file, "--token-secret-file").strip()
            if args.token_secret_file
            else environ.get("VARSTORE_TOKEN_SECRET", "").strip().encode()
        )
        if admin_token and len(admin_token) < MIN_SECRET_LENGTH:
            raise ConfigError(f"the admin token is shorter than {MIN_SECRET_LENGTH} characters")
        if secret and len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(f"the token secret is shorter than {MIN_SECRET_LENGTH} bytes")
        if secret and not admin_token:
            raise ConfigError(
                "a token secret without an admin token: give --admin-token-file or "
                "VARSTORE_ADMIN_TOKEN too"
            )
        config = cls(
            db=args.db,
            listen=args.listen,
            sync=args.sync,
            snapshot_every=args.snapshot_every,
            checkpoint_every=args.checkpoint_every,
            poll_interval=args.poll_interval,
            limits=limits,
            security=Security(tls, admin_token or None, secret or None),
            insecure=args.insecure,
            metrics=args.metrics or None,
            log_format=args.log_format,
            log_level=args.log_level.upper(),
            http=getattr(args, "http", None) or None,
        )
        check_exposure(config.listen, config.security, insecure=config.insecure)
        if config.metrics is not None:
            split_address(config.metrics, "--metrics")
        if config.http is not None:
            check_http_exposure(config.http, insecure=config.insecure)
        return config


def split_address(address: str, what: str = "--listen") -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT``: an empty host is 127.0.0.1, an IPv6 address goes in
    brackets (``[::1]:50051``), the port is 0 to 65535 (0 picks a free one).

    Raises:
        ConfigError: not HOST:PORT, a malformed host, or a port out of range.
    """
    host, sep, port = address.rpartition(":")
    if not sep or _PORT.fullmatch(port) is None:
        raise ConfigError(f"{what} must be HOST:PORT (such as 127.0.0.1:50051), not {address!r}")
    if int(port) > 65535:
        raise ConfigError(
            f"{what} {address}: the port must be from 0 to 65535 (0 picks a free one), not {port}"
        )
    return _checked_host(host, address, what) or "127.0.0.1", int(port)


_PORT = re.compile(r"[0-9]+")
_HOST_NAME = re.compile(r"(?!-)[\w-]{1,63}(?<!-)(\.(?!-)[\w-]{1,63}(?<!-))*\.?", re.ASCII)


def _checked_host(host: str, address: str, what: str) -> str:
    """The host of ``address`` without brackets, if it is an IP address or a host name."""
    if host.startswith("[") or host.endswith("]") or ":" in host:
        inner = host.removeprefix("[").removesuffix("]")
        if not (host.startswith("[") and host.endswith("]")) or not _is_ip(inner, 6):
            raise ConfigError(
                f"{what} {address}: an IPv6 address goes in brackets, as in [::1]:50051"
            )
        return inner
    numeric = host.replace(".", "").isdigit()
    if host and not (_is_ip(host, 4) if numeric else _HOST_NAME.fullmatch(host) is not None):
        raise ConfigError(f"{what} {address}: {host!r} is not an IP address or a host name")
    return host


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another name: it may resolve anywhere


def check_exposure(listen: str, security: Security, *, insecure: bool) -> None:
    """Refuse to listen beyond loopback without TLS unless ``insecure``.

    Raises:
        ConfigError: the one line saying what to add.
    """
    host, _ = split_address(listen)
    if security.tls is None and not insecure and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {listen} without TLS: calls and tokens would cross "
            "the network in clear; give --tls-cert and --tls-key, listen on 127.0.0.1, "
            "or pass --insecure to accept it"
        )


def check_http_exposure(listen: str, *, insecure: bool) -> None:
    """Refuse a non-loopback ``--http`` address unless ``insecure``: the audit page has no
    TLS and no tokens (with or without them on the gRPC side).

    Raises:
        ConfigError: the one line saying what to change.
    """
    host, _ = split_address(listen, "--http")
    if not insecure and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve the audit page on {listen}: it has no TLS and no tokens, so "
            "anyone who reaches it reads every session; serve it on 127.0.0.1 (reach it "
            "through an SSH tunnel or a proxy), or pass --insecure to accept it"
        )


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as problem:
        raise ConfigError(f"cannot read {flag} {path}: {problem.strerror or problem}") from None


def _check_tls_files(cert: str, key: str, client_ca: str | None) -> None:
    """Refuse TLS files that are not what their flags say (gRPC would only log it).

    Raises:
        ConfigError: the one line saying which file is wrong.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, ValueError) as problem:
        mismatch = getattr(problem, "reason", "") == "KEY_VALUES_MISMATCH"
        raise ConfigError(
            f"--tls-key {key} is not the private key of --tls-cert {cert}"
            if mismatch
            else f"--tls-cert {cert} and --tls-key {key} must be a PEM certificate chain and "
            "its unencrypted PEM private key"
        ) from None
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, ValueError):
            raise ConfigError(
                f"--tls-client-ca {client_ca} must hold PEM CA certificates"
            ) from None


def _no_password() -> bytes:
    """The password callback of an encrypted key: none is given, so loading it fails."""
    return b""
