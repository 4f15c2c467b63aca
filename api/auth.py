"""Who is calling, and what they may touch: bearer tokens, mTLS identities and the token
interceptor.

Identities: ``admin`` (the admin token: everything), ``session:<id>`` (a session token:
that session only), ``cert:<subject>`` (a client certificate the server verified, on a
server without tokens: everything). Rules, checked before any handler runs:

* On a server with tokens, every call but the open ones (:data:`OPEN_METHODS`: server
  info, health, reflection) needs ``authorization: Bearer <token>``; none, or one the
  server did not make, is UNAUTHENTICATED.
* A session token calls only the methods of :data:`SESSION_METHODS`, and only on its own
  session as created when the token was issued. Any other session, existing or not (and
  its own session re-created since), is PERMISSION_DENIED with one message, so the answer
  tells nothing about other sessions. Creating, listing, forking and importing sessions
  is for the admin.

Tokens are never stored, in clear or hashed, and never logged. The admin token is held
only as its SHA-256 (compared in constant time). A session token is derived, not
remembered: ``vst1.<session id, base64url>.<creation position>.<HMAC-SHA256>`` under the
server's token secret, so any server sharing the secret (and the log) accepts it, and a
session deleted and created again gets new tokens (its creation position moved).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import grpc

from varstore.api.calls import Finish, Handler, WrappingInterceptor
from varstore.types import PermissionDenied, Unauthenticated

__all__ = [
    "ADMIN_ONLY_METHODS",
    "OPEN_METHODS",
    "SESSION_METHODS",
    "AuthInterceptor",
    "Identity",
    "Tokens",
    "current_identity",
    "recorded_source",
]

_SERVICE = "/varstore.v1.VariableStore/"
#: Methods anyone may call: what the server is (``requires_token`` tells a client it needs
#: one), health checks and reflection (the contract is public).
OPEN_METHODS: Final = frozenset(
    {
        f"{_SERVICE}GetServerInfo",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)
#: Methods a session token may call, on its own session (the request's ``session_id``).
SESSION_METHODS: Final = frozenset(
    _SERVICE + name
    for name in (
        "GetSession",
        "DeleteSession",
        "RegisterVariable",
        "GetVariable",
        "SetVariable",
        "GetVariables",
        "SetVariables",
        "ListVariables",
        "DeleteVariable",
        "GetVariableHistory",
        "ReadEvents",
        "RollbackVariable",
        "WatchSession",
        "ExportSession",
    )
)
#: Methods only the admin may call: they make sessions or see them all.
ADMIN_ONLY_METHODS: Final = frozenset(
    _SERVICE + name for name in ("CreateSession", "ListSessions", "ForkSession", "ImportSession")
)
#: Responses that carry a new session's token, by method.
_ISSUING: Final = frozenset(
    _SERVICE + name for name in ("CreateSession", "ForkSession", "ImportSession")
)

_PREFIX: Final = "vst1"
_KEY_LABEL: Final = b"varstore session tokens v1\x00"
_NOT_GRANTED: Final = "this token does not grant access to that session"


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller: ``name`` is what the log records as the source."""

    name: str
    admin: bool = False
    #: For a session token: the session it grants, and that session's creation position.
    session_id: str | None = None
    created_position: int = 0


ADMIN: Final = Identity("admin", admin=True)

_CALLER: ContextVar[Identity | None] = ContextVar("varstore_caller", default=None)


def current_identity() -> Identity | None:
    """The identity of the call running on this thread (None on a server without tokens or
    client certificates). Set by :class:`AuthInterceptor` before the handler runs."""
    return _CALLER.get()


def recorded_source(given: str, context: grpc.ServicerContext) -> str:
    """The ``source`` recorded for a write: the authenticated identity, with the caller's
    own label beside it ("admin (alice)"); without authentication, the label or the peer."""
    identity = _CALLER.get()
    if identity is None:
        return given or context.peer()
    return f"{identity.name} ({given})" if given and given != identity.name else identity.name


class Tokens:
    """The server's tokens: checks the admin token, issues and checks session tokens.

    ``secret`` keys the session tokens (servers sharing it accept each other's); without
    one it is derived from the admin token, so changing the admin token revokes them all.
    """

    def __init__(self, admin_token: str, secret: bytes | None = None) -> None:
        if not admin_token:
            raise ValueError("the admin token is empty")
        self._admin = hashlib.sha256(admin_token.encode()).digest()
        material = secret if secret else b"admin:" + self._admin
        self._key = hmac.new(material, _KEY_LABEL, hashlib.sha256).digest()

    def issue(self, session_id: str, created_position: int) -> str:
        """The token of ``session_id`` as created at ``created_position``."""
        name = base64.urlsafe_b64encode(session_id.encode()).rstrip(b"=").decode()
        mac = self._mac(session_id, created_position)
        return f"{_PREFIX}.{name}.{created_position}.{mac}"

    def identify(self, token: str) -> Identity | None:
        """The identity a token proves, or None if this server did not make it."""
        given = token.encode()
        if hmac.compare_digest(hashlib.sha256(given).digest(), self._admin):
            return ADMIN
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != _PREFIX or not parts[2].isdigit():
            return None
        try:
            padded = parts[1] + "=" * (-len(parts[1]) % 4)
            session_id = base64.urlsafe_b64decode(padded.encode()).decode()
        except (binascii.Error, ValueError):
            return None
        created = int(parts[2])
        if not hmac.compare_digest(parts[3], self._mac(session_id, created)):
            return None
        return Identity(f"session:{session_id}", session_id=session_id, created_position=created)

    def _mac(self, session_id: str, created_position: int) -> str:
        message = session_id.encode() + b"\x00" + str(created_position).encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


#: The creation position of a session's current life, or None if it never existed.
CreationOf = Callable[[str], int | None]


class AuthInterceptor(WrappingInterceptor):
    """Authenticates every call and authorises it (see the module docstring); adds the
    session token to the answers that create a session, and ``requires_token`` to
    GetServerInfo's. With neither tokens nor client certificates everything is allowed and
    no identity is set."""

    def __init__(
        self, tokens: Tokens | None, creation_of: CreationOf, *, certificates: bool = True
    ) -> None:
        super().__init__(self._admit, self._amend)
        self._tokens = tokens
        self._creation_of = creation_of
        #: Whether callers may present client certificates (mTLS): False lets a server
        #: with no tokens skip this interceptor altogether.
        self._certificates = certificates

    def wrap(self, handler: Handler, method: str) -> Handler:
        """``handler`` admitted first; as it is where nobody can be identified."""
        if self._tokens is None and not self._certificates:
            return handler
        return super().wrap(handler, method)

    def _admit(self, method: str, request: Any, context: grpc.ServicerContext) -> Finish | None:
        _CALLER.set(None)  # a refused call must not inherit this thread's last caller
        identity = self._authenticate(method, context)
        _CALLER.set(identity)
        if identity is None or identity.admin or method in OPEN_METHODS:
            return None
        if method not in SESSION_METHODS:
            raise PermissionDenied(f"{method.rsplit('/', 1)[-1]} needs the admin token")
        session_id = getattr(request, "session_id", None)
        if (
            not isinstance(session_id, str)
            or session_id != identity.session_id
            or self._creation_of(session_id) != identity.created_position
        ):
            raise PermissionDenied(_NOT_GRANTED)
        return None

    def _authenticate(self, method: str, context: grpc.ServicerContext) -> Identity | None:
        """The caller's identity; None where nobody is identified. Raises Unauthenticated."""
        certificate = _certificate_subject(context)
        if self._tokens is None:
            return Identity(f"cert:{certificate}", admin=True) if certificate else None
        token = _bearer(context.invocation_metadata())
        identity = self._tokens.identify(token) if token else None
        if identity is None and method not in OPEN_METHODS:
            raise Unauthenticated(
                "this server needs a token: send 'authorization: Bearer <token>'"
                if not token
                else "the token is not valid on this server"
            )
        return identity

    def _amend(self, method: str, response: Any) -> Any:
        if self._tokens is None:
            return response
        if method in _ISSUING:
            session_id = response.session.id
            created = self._creation_of(session_id)
            if created is not None:
                response.session_token = self._tokens.issue(session_id, created)
        elif method == f"{_SERVICE}GetServerInfo":
            response.requires_token = True
        return response


def _bearer(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The bearer token of the call's ``authorization`` metadata, or ""."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


def _certificate_subject(context: grpc.ServicerContext) -> str:
    """The subject of the client certificate the TLS handshake verified, or ""."""
    auth = context.auth_context() or {}
    for key in ("x509_subject", "x509_common_name"):
        values = auth.get(key)
        if values:
            first = values[0]
            return first.decode(errors="replace") if isinstance(first, bytes) else str(first)
    return ""
