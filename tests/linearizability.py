"""A linearizability checker of the Wing-Gong kind, with the memoisation of Lowe's
just-in-time search (as Porcupine does it), and the compare-and-set register it checks.

A history is a list of :class:`Operation`: each was invoked at ``call`` and completed at
``ret`` with ``output``, or was cut off (``ret`` None: a timeout, a killed server) and may
or may not have taken effect. The history is linearizable when the operations can be put
in one order that (a) keeps every completed operation after each operation that completed
before it was invoked, (b) contains every completed operation and any subset of the cut
ones, and (c) the model accepts, step by step, with each operation's output.

The search walks the history in time order and tries to linearize each pending call
before the first return it reaches; a return reached while its call is not linearized
means backtracking. A set of (linearized operations, model state) pairs already explored
prunes repeats, which turns the factorial search into one bounded by the distinct states
the history can reach. Model states must therefore be hashable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = [
    "CAS_REGISTER",
    "Cas",
    "CheckTooLong",
    "Done",
    "Model",
    "Operation",
    "Read",
    "Refused",
    "Register",
    "Result",
    "Seen",
    "Write",
    "check",
]

S = TypeVar("S")
In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class Operation(Generic[In, Out]):
    """One operation as a client saw it. Times come from one monotonic clock."""

    #: Which client (thread) made it; for messages only.
    client: int
    #: When it was invoked.
    call: int
    #: When it completed; None when it was cut off (may or may not have happened).
    ret: int | None
    #: What was asked.
    input: In
    #: What was answered; None exactly when ``ret`` is None.
    output: Out | None = None

    def __post_init__(self) -> None:
        if (self.ret is None) != (self.output is None):
            raise ValueError("an operation has an output exactly when it has a return time")
        if self.ret is not None and self.ret < self.call:
            raise ValueError(f"operation returns at {self.ret} before its call at {self.call}")


@dataclass(frozen=True)
class Model(Generic[S, In, Out]):
    """A sequential specification: an initial state and a step function.

    ``step(state, input, output)`` is the state after the operation, or None when the
    operation cannot give ``output`` in ``state``. With ``output`` None (a cut-off
    operation placed in the order: it happened, unseen) it must return the state after it.
    """

    init: S
    step: Callable[[S, In, Out | None], S | None]


class CheckTooLong(Exception):
    """The search took more steps than allowed: the history is neither accepted nor refused."""


@dataclass(frozen=True)
class Result:
    """The verdict. ``order`` is a linearization (indices into the history) when there is
    one; otherwise ``longest`` is the longest prefix of one the search found."""

    linearizable: bool
    order: tuple[int, ...] = ()
    longest: tuple[int, ...] = field(default=(), repr=False)


class _Entry:
    """A call or return in the doubly linked list of entries in time order."""

    __slots__ = ("index", "is_call", "match", "next", "prev")

    def __init__(self, index: int, is_call: bool) -> None:
        self.index = index
        self.is_call = is_call
        self.match: _Entry | None = None  # the return of a call (None: cut off)
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _unlink(entry: _Entry) -> None:
    assert entry.prev is not None  # the head sentinel precedes every entry
    entry.prev.next = entry.next
    if entry.next is not None:
        entry.next.prev = entry.prev


def _relink(entry: _Entry) -> None:
    assert entry.prev is not None
    entry.prev.next = entry
    if entry.next is not None:
        entry.next.prev = entry


def _entries(history: Sequence[Operation[In, Out]]) -> _Entry:
    """The head sentinel of the entries in time order; a call comes before a return at the
    same time (such operations count as concurrent: the lenient reading)."""
    timed: list[tuple[int, int, _Entry]] = []
    for index, op in enumerate(history):
        call = _Entry(index, True)
        timed.append((op.call, 0, call))
        if op.ret is not None:
            call.match = _Entry(index, False)
            timed.append((op.ret, 1, call.match))
    timed.sort(key=lambda item: (item[0], item[1]))
    head = _Entry(-1, False)
    last = head
    for _, _, entry in timed:
        last.next, entry.prev = entry, last
        last = entry
    return head


def check(
    model: Model[S, In, Out], history: Sequence[Operation[In, Out]], *, max_steps: int | None = None
) -> Result:
    """Whether ``history`` is linearizable with respect to ``model``.

    Raises:
        CheckTooLong: more than ``max_steps`` search steps were needed.
    """
    head = _entries(history)
    pending = sum(op.ret is not None for op in history)  # completed, not yet linearized
    state = model.init
    linearized = 0  # a bit per operation index
    explored: set[tuple[int, S]] = {(0, state)}
    stack: list[tuple[_Entry, S]] = []
    longest: tuple[int, ...] = ()
    steps = 0
    entry = head.next
    while pending:
        steps += 1
        if max_steps is not None and steps > max_steps:
            raise CheckTooLong(f"no verdict after {max_steps} steps ({len(history)} operations)")
        assert entry is not None  # a completed call's return always lies ahead of it
        if entry.is_call:
            op = history[entry.index]
            after = model.step(state, op.input, op.output)
            if after is not None:
                bits = linearized | (1 << entry.index)
                if (bits, after) not in explored:
                    explored.add((bits, after))
                    stack.append((entry, state))
                    state, linearized = after, bits
                    _unlink(entry)
                    if entry.match is not None:
                        _unlink(entry.match)
                        pending -= 1
                    entry = head.next
                    continue
            entry = entry.next
            continue
        # A return whose call is not linearized yet: undo the latest choice.
        if len(stack) > len(longest):
            longest = tuple(e.index for e, _ in stack)
        if not stack:
            return Result(False, longest=longest)
        entry, state = stack.pop()
        linearized &= ~(1 << entry.index)
        if entry.match is not None:
            _relink(entry.match)
            pending += 1
        _relink(entry)
        entry = entry.next
    return Result(True, order=tuple(e.index for e, _ in stack))


# The compare-and-set register: what SetVariable (with or without expected_version) and
# GetVariable do to one variable. Frozen dataclasses rather than NamedTuples: a NamedTuple
# equals any tuple with the same items, so Refused() would equal Read().


@dataclass(frozen=True, slots=True)
class Read:
    """GetVariable."""


@dataclass(frozen=True, slots=True)
class Write:
    """SetVariable without expected_version."""

    value: str


@dataclass(frozen=True, slots=True)
class Cas:
    """SetVariable with expected_version."""

    expected_version: int
    value: str


@dataclass(frozen=True, slots=True)
class Seen:
    """A read's answer."""

    value: str
    version: int


@dataclass(frozen=True, slots=True)
class Done:
    """A write accepted: the variable's new version."""

    version: int


@dataclass(frozen=True, slots=True)
class Refused:
    """A compare-and-set refused (ABORTED: the version was not the expected one)."""


@dataclass(frozen=True, slots=True)
class Register:
    """The register's state: its value and version."""

    value: str
    version: int


def _register_step(state: Register, op: Read | Write | Cas, out: object) -> Register | None:
    if isinstance(op, Read):
        return state if out is None or out == Seen(state.value, state.version) else None
    if isinstance(op, Cas) and state.version != op.expected_version:
        return state if out is None or out == Refused() else None
    after = Register(op.value, state.version + 1)
    return after if out is None or out == Done(after.version) else None


#: A register that starts as ("init", 0), as a variable registered with the value "init".
CAS_REGISTER: Model[Register, Read | Write | Cas, Seen | Done | Refused] = Model(
    Register("init", 0), _register_step
)
