"""Flows: the client's logic written once, as generators that yield what they need done
and receive what happened (httpx's ``Auth.auth_flow`` pattern, for every operation).

A flow does no I/O and never awaits. ``response = yield Call("GetVariable", request,
timeout)`` asks for one call (the effects are in :mod:`varstore.client._effects`); the
driver sends back the answer, or throws the failure into the flow at that ``yield``, so
a flow handles errors with a plain ``try``. Two thin drivers perform the effects, one
blocking (``varstore.client._sync``) and one asyncio (``varstore.client._async``), and
differ only by ``await``; a :class:`Runner` steps a flow for either.

A public method is written once, as a flow decorated with :func:`operation`: read from a
sync object it is a method returning the flow's result; from an asyncio object, a
coroutine method (which object is which is the type argument, :class:`Sync` or
:class:`Async`, of :class:`Flavoured`).

Retrying is one flow too, :func:`retried` (api-core's ``retry_base`` split the same way):
:func:`next_delay` decides, from the error and the time left, whether and after what pause
to try again; the flow asks the driver to ``Sleep`` (``time.sleep`` or ``asyncio.sleep``)
and repeats the call, a write with the same request id.
"""

from __future__ import annotations

import functools
import inspect
import math
import random
import re
import time
import typing
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from types import GeneratorType, MethodType
from typing import (
    Any,
    ClassVar,
    Concatenate,
    Final,
    Generic,
    ParamSpec,
    Protocol,
    TypeVar,
    final,
    overload,
)

import grpc

from varstore.client._effects import Blocking, Call, Effect, Flow, Sleep, rpc_failure
from varstore.client._positions import SeenPositions
from varstore.types import CommitOutcomeUnknown, DeadlineExceeded, Unavailable, VarstoreError

__all__ = [
    "READ_RETRYABLE",
    "WRITE_RETRYABLE",
    "Async",
    "Driver",
    "Flavoured",
    "Flow",
    "Operation",
    "Ready",
    "Retry",
    "Runner",
    "Sync",
    "every_page",
    "new_request_id",
    "next_delay",
    "operation",
    "ready",
    "retried",
]

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound="Sync | Async")


class Driver(Protocol):
    """What performs the effects of flows: ``run`` returns a flow's result (sync) or a
    coroutine for it (asyncio)."""

    def run(self, flow: Flow[Any]) -> Any: ...


# -- running a flow -----------------------------------------------------------------------------


class Runner(Generic[T]):
    """One run of a flow, started at once: ``effect`` is what it waits for; answer with
    :meth:`send` or :meth:`throw` until ``done`` (then ``result`` holds what it returned).
    A flow that raises ends the run and the error propagates from the answering call."""

    __slots__ = ("_flow", "done", "effect", "result")

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self.done = False
        self.effect: Effect
        self.result: T
        self._step(flow.send, None)

    def send(self, value: object) -> None:
        """Answer the effect with ``value``."""
        self._step(self._flow.send, value)

    def throw(self, error: BaseException) -> None:
        """Answer the effect with a failure, raised in the flow where it waits."""
        self._step(self._flow.throw, error)

    def fail(self, failure: Exception) -> None:
        """Answer the effect with what performing it raised: a failed call as its
        VarstoreError (:func:`rpc_failure`), anything else as it is."""
        self.throw(rpc_failure(failure) if isinstance(failure, grpc.RpcError) else failure)

    def _step(self, resume: Callable[[Any], Effect], answer: Any) -> None:
        try:
            self.effect = resume(answer)
        except StopIteration as finished:
            self.done = True
            self.result = finished.value
        except BaseException:
            self.done = True
            raise


def every_page(
    call: Call,
    items: Callable[[Any], Sequence[T]],
    limit: int | None = None,
    retry: Retry | None = None,
    seen: SeenPositions | None = None,
) -> Flow[list[T]]:
    """The items of page after page of ``call`` (each answer's ``next_page_token`` becomes
    the request's ``page_token``), until the last page or ``limit`` items; with ``retry``,
    each page is :func:`retried` (with ``seen`` as it says)."""
    found: list[T] = []
    while limit is None or len(found) < limit:
        page = (yield call) if retry is None else (yield from retried(call, retry, seen=seen))
        found.extend(items(page))
        if not page.next_page_token:
            break
        setattr(call.request, "page_token", page.next_page_token)  # noqa: B010 - any request
    return found if limit is None else found[:limit]


# -- retrying ---------------------------------------------------------------------------------

#: Failures after which a write is retried, with its request id: nothing was written
#: (UNAVAILABLE), or it may have been (DEADLINE_EXCEEDED, COMMIT_OUTCOME_UNKNOWN), and the
#: server answers a retry of a recorded request id with the first answer.
WRITE_RETRYABLE: Final = (Unavailable, DeadlineExceeded, CommitOutcomeUnknown)
#: Failures after which a read is retried: only UNAVAILABLE (a read that ran out of time
#: would only run out of it again).
READ_RETRYABLE: Final = (Unavailable,)


@dataclass(frozen=True, slots=True)
class Retry:
    """How calls are retried: exponential backoff with full jitter, within one deadline.

    The pause before retry ``n`` is drawn uniformly from 0 to ``min(maximum, initial *
    multiplier ** (n - 1))`` seconds. ``deadline`` bounds the whole call, attempts and
    pauses together: each attempt's timeout is cut to the time left, and no pause ends
    past it. Immutable: the ``with_*`` methods return a changed copy.
    """

    #: False: one attempt (a write still gets a request id).
    enabled: bool = True
    #: Seconds from the first attempt within which the call, retries included, ends.
    deadline: float = 60.0
    initial: float = 0.05
    maximum: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        for name in ("deadline", "initial", "maximum", "multiplier"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"retry {name} must be a number of seconds, not {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"retry {name} must be a positive number, not {value!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Retry:
        """The settings a context's or client's config asks for: ``retry`` (True; False
        for one attempt, or a :class:`Retry`) and ``retry_deadline`` (seconds, 60)."""
        given = config.get("retry", True)
        retry = given if isinstance(given, Retry) else cls()
        if not isinstance(given, bool | Retry):
            raise TypeError(f"config 'retry' must be True, False or a Retry, not {given!r}")
        if given is False:
            retry = retry.with_enabled(False)
        if "retry_deadline" in config:
            retry = retry.with_deadline(config["retry_deadline"])
        return retry

    def with_enabled(self, enabled: bool) -> Retry:
        """A copy that retries (True) or makes one attempt (False)."""
        return replace(self, enabled=enabled)

    def with_deadline(self, seconds: float) -> Retry:
        """A copy whose calls end within ``seconds``."""
        return replace(self, deadline=seconds)

    def with_delay(
        self,
        initial: float | None = None,
        maximum: float | None = None,
        multiplier: float | None = None,
    ) -> Retry:
        """A copy with another backoff (the values not given are kept)."""
        return replace(
            self,
            initial=self.initial if initial is None else initial,
            maximum=self.maximum if maximum is None else maximum,
            multiplier=self.multiplier if multiplier is None else multiplier,
        )

    def ceiling(self, attempt: int) -> float:
        """The longest pause before retry number ``attempt`` (1 for the first)."""
        exponent = min(attempt - 1, 64)  # past this, every ceiling is ``maximum`` anyway
        return float(min(self.maximum, self.initial * self.multiplier**exponent))


def next_delay(
    retry: Retry, attempt: int, error: BaseException, *, write: bool, left: float, draw: float
) -> float | None:
    """The pause before trying again after ``error`` ended attempt ``attempt`` (``draw``
    in [0, 1) picks it below the ceiling), or None to give up and raise ``error``: retries
    are off, the error is not one to retry (a write: :data:`WRITE_RETRYABLE`; a read:
    :data:`READ_RETRYABLE`), or the pause would end with less than nothing of the ``left``
    seconds."""
    retryable = WRITE_RETRYABLE if write else READ_RETRYABLE
    if not retry.enabled or not isinstance(error, retryable):
        return None
    pause = retry.ceiling(attempt) * draw
    return pause if pause < left else None


def new_request_id() -> str:
    """A fresh request id: one per logical write, the same on every retry of it."""
    return uuid.uuid4().hex


def _takes_request_id(request: Any) -> bool:
    return "request_id" in request.DESCRIPTOR.fields_by_name


def retried(
    effect: Call | Blocking,
    retry: Retry,
    *,
    write: bool | None = None,
    seen: SeenPositions | None = None,
    clock: Callable[[], float] = time.monotonic,
    draw: Callable[[], float] = random.random,
) -> Flow[Any]:
    """The answer to ``effect``, asked for again after a retryable failure (see
    :func:`next_delay`) until it is answered, fails otherwise, or the deadline comes.

    A ``Call`` whose request has a ``request_id`` is a write (``write`` says so for a
    ``Blocking`` effect, which carries its own id): its request gets a new id before the
    first attempt unless it has one, and every attempt sends that id, so the server
    records it once and answers a retry as the first time. Each attempt's timeout is the
    call's, cut to the time left. The error raised is the last attempt's.

    With ``seen`` (the client's :class:`SeenPositions`), every attempt of a ``Call`` asks
    for the highest position the client has seen of the session (``min_position``), and
    the answer's position is recorded: whichever server answers, it is never behind what
    the client already saw (a server that is behind answers UNAVAILABLE: retried).
    """
    if write is None:
        write = isinstance(effect, Call) and _takes_request_id(effect.request)
    if isinstance(effect, Call) and write and not effect.request.request_id:  # type: ignore[attr-defined]
        effect.request.request_id = new_request_id()  # type: ignore[attr-defined]
    if not retry.enabled:
        return (yield from _seen_through(effect, seen))
    deadline = clock() + retry.deadline
    attempt = 0
    while True:
        attempt += 1
        try:
            return (yield from _seen_through(_within(effect, deadline - clock()), seen))
        except VarstoreError as failure:
            left = deadline - clock()
            pause = next_delay(retry, attempt, failure, write=write, left=left, draw=draw())
            if pause is None:
                raise
        yield Sleep(pause)


def _seen_through(effect: Call | Blocking, seen: SeenPositions | None) -> Flow[Any]:
    """The answer to ``effect``; with ``seen``, a call asks for what the client has seen of
    its session and records where the answer stands."""
    if seen is None or not isinstance(effect, Call):
        return (yield effect)
    seen.stamp(effect.request)
    answer = yield effect
    seen.saw_answer(answer)
    return answer


def _within(effect: Call | Blocking, left: float) -> Call | Blocking:
    """``effect`` with its timeout cut to ``left`` seconds (a Blocking effect bounds its
    own work)."""
    if not isinstance(effect, Call):
        return effect
    timeout = max(left, 0.001) if effect.timeout is None else max(min(effect.timeout, left), 0.001)
    return effect if timeout == effect.timeout else effect._replace(timeout=timeout)


# -- one definition, two flavours ------------------------------------------------------------


@final
class Sync:
    """Flavour marker: operations return their results."""


@final
class Async:
    """Flavour marker: operations are coroutines."""


class Flavoured(Generic[F]):
    """An object whose :class:`Operation` s run through ``_run``: its driver's, which
    returns a flow's result (``Flavoured[Sync]``) or a coroutine for it (``[Async]``).

    A class that names its flavour (``class SessionContext(SessionOps[Sync, ...])``) gets
    every operation it inherits as a plain function of that flavour, so that calling one
    costs what calling a method costs, and ``inspect`` sees a coroutine function where
    there is one.
    """

    _is_async: ClassVar[bool] = False
    _run: Callable[[Flow[Any]], Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        flavours = [
            flavour
            for base in getattr(cls, "__orig_bases__", ())
            for flavour in typing.get_args(base)
            if flavour in (Sync, Async)
        ]
        if not flavours:
            return
        cls._is_async = flavours[0] is Async
        seen: set[str] = set()
        for klass in cls.__mro__:
            for name, value in vars(klass).items():
                if name not in seen and isinstance(value, Operation):
                    setattr(cls, name, value.function(cls._is_async))
                seen.add(name)


@final
class Ready(Generic[T]):
    """The type of a result an operation gives at once (see :func:`ready`)."""


def ready(value: T) -> Ready[T]:
    """``value`` as an operation's result given at once, with no I/O (a read the cache
    answers whole), so that no driver runs. It is ``value`` itself: the cached path
    allocates nothing, and an operation tells a flow apart as a generator."""
    return value  # type: ignore[return-value]


class Operation(Generic[P, T]):
    """A public method written once as a flow (see :func:`operation`)."""

    def __init__(self, flow: Callable[Concatenate[Any, P], Flow[T] | Ready[T]]) -> None:
        @functools.wraps(flow)
        def blocking(owner: Any, /, *args: Any, **kwargs: Any) -> Any:
            steps = flow(owner, *args, **kwargs)
            return owner._run(steps) if type(steps) is GeneratorType else steps

        @functools.wraps(flow)
        async def awaitable(owner: Any, /, *args: Any, **kwargs: Any) -> Any:
            steps = flow(owner, *args, **kwargs)
            return await owner._run(steps) if type(steps) is GeneratorType else steps

        signature = _result_signature(flow)
        for function in (blocking, awaitable):
            setattr(function, "__signature__", signature)  # noqa: B010 - for inspect and help
        self._functions = (blocking, awaitable)

    def function(self, is_async: bool) -> Callable[..., Any]:
        """The method for one flavour: returning the result, or a coroutine function."""
        return self._functions[is_async]

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> Callable[..., Any]: ...

    @overload
    def __get__(self, instance: Flavoured[Sync], owner: type[Any]) -> Callable[P, T]: ...

    @overload
    def __get__(
        self, instance: Flavoured[Async], owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    def __get__(self, instance: object, owner: type[Any]) -> Any:
        function = self.function(owner._is_async)
        return function if instance is None else MethodType(function, instance)


def operation(flow: Callable[Concatenate[Any, P], Flow[T] | Ready[T]]) -> Operation[P, T]:
    """Make the flow ``flow`` a public method: its signature and docstring are the
    method's, and its result is what the method returns (or its coroutine returns)."""
    return Operation(flow)


_RESULT: Final = re.compile(r"(?:Ready\[.*\] \| )?Flow\[(?P<result>.*)\]")


def _result_signature(flow: Callable[..., Any]) -> inspect.Signature:
    """``flow``'s signature, returning what the flow returns rather than the flow."""
    signature = inspect.signature(flow)
    returns = signature.return_annotation
    found = _RESULT.fullmatch(returns) if isinstance(returns, str) else None
    return signature.replace(return_annotation=found["result"]) if found else signature
