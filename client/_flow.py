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
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Callable, Coroutine, Sequence
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

from varstore.client._effects import Call, Effect, Flow, rpc_failure

__all__ = [
    "Async",
    "Driver",
    "Flavoured",
    "Flow",
    "Operation",
    "Ready",
    "Runner",
    "Sync",
    "every_page",
    "operation",
    "ready",
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
    call: Call, items: Callable[[Any], Sequence[T]], limit: int | None = None
) -> Flow[list[T]]:
    """The items of page after page of ``call`` (each answer's ``next_page_token`` becomes
    the request's ``page_token``), until the last page or ``limit`` items."""
    found: list[T] = []
    while limit is None or len(found) < limit:
        page = yield call
        found.extend(items(page))
        if not page.next_page_token:
            break
        setattr(call.request, "page_token", page.next_page_token)  # noqa: B010 - any request
    return found if limit is None else found[:limit]


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
