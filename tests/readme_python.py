"""Runs a README ``python`` block in this process and checks its ``# ->`` expectations.

An expression statement followed by ``# -> EXPECTED`` on its line (the last line, for one
that spans several) is checked: for ``print(...)`` what it printed, for any other
expression the ``repr`` of its value, matched against EXPECTED as readme_match does
(``...`` matches any text); a comment may follow, after two spaces and ``#``
(``x  # -> 0.7  # a cache hit``). The block is compiled with README.md as its file name and its
README line numbers, so a traceback points at the README line that failed.
"""

from __future__ import annotations

import ast
import contextlib
import io
import tokenize
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from readme_blocks import Block
from readme_match import difference, matches

EXPECT = "# ->"


class ExpectationFailed(AssertionError):
    """A ``# ->`` expectation that did not hold."""

    def __init__(self, line: int, expected: str, actual: str) -> None:
        super().__init__(f"README line {line}: {difference(expected, actual)}")
        self.line = line


@dataclass(frozen=True)
class PythonOutcome:
    """How a block went: None for ``failure`` when every line ran and every check held."""

    failure: tuple[int, str] | None  # (README line, message)
    output: str  # what the block printed


def _expectations(source: str) -> dict[int, str]:
    """Block-relative line -> the text after ``# ->`` on it."""
    found: dict[int, str] = {}
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    for token in tokens:
        if token.type == tokenize.COMMENT and token.string.startswith(EXPECT):
            expected = token.string[len(EXPECT) :].split("  #", 1)[0]
            found[token.start[0]] = expected.strip()
    return found


class _Checks(ast.NodeTransformer):
    """Wraps each expression statement that has an expectation in a check call."""

    def __init__(self, expectations: dict[int, str], offset: int) -> None:
        self.expectations = expectations
        self.offset = offset
        self.used: set[int] = set()

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        line = node.end_lineno or node.lineno
        if line not in self.expectations:
            return node
        self.used.add(line)
        where = ast.Constant(line + self.offset)
        want = ast.Constant(self.expectations[line])
        value = node.value
        if (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id == "print"
        ):
            call = ast.Call(
                ast.Name("__readme_print__", ast.Load()),
                [where, want, *value.args],
                value.keywords,
            )
        else:
            call = ast.Call(ast.Name("__readme_check__", ast.Load()), [where, want, value], [])
        return ast.copy_location(ast.Expr(call), node)


def run_python(
    block: Block, forward: Callable[[str], str], back: Callable[[str], str]
) -> PythonOutcome:
    """Run ``block`` (its text passed through ``forward``: the README's addresses to the
    test server's); ``back`` maps what ran back into the README's terms before matching."""
    source = forward(block.text)
    output = io.StringIO()
    try:
        tree = ast.parse(source, filename="README.md")
        expectations = _expectations(source)
    except SyntaxError as error:
        return PythonOutcome((block.line + (error.lineno or 1), f"SyntaxError: {error}"), "")
    checks = _Checks(expectations, block.line)
    tree = ast.fix_missing_locations(checks.visit(tree))
    unused = sorted(set(expectations) - checks.used)
    if unused:
        line = unused[0] + block.line
        return PythonOutcome((line, "`# ->` must follow an expression statement"), "")
    ast.increment_lineno(tree, block.line)
    code = compile(tree, "README.md", "exec")

    def check(line: int, expected: str, value: Any) -> Any:
        actual = back(repr(value))
        if not matches(expected, actual):
            raise ExpectationFailed(line, expected, actual)
        return value

    def check_print(line: int, expected: str, *args: Any, **kwargs: Any) -> None:
        printed = io.StringIO()
        print(*args, file=printed, **kwargs)
        output.write(printed.getvalue())
        actual = back(printed.getvalue())
        if not matches(expected, actual):
            raise ExpectationFailed(line, expected, actual)

    namespace: dict[str, Any] = {
        "__name__": "__main__",
        "__readme_check__": check,
        "__readme_print__": check_print,
    }
    try:
        with contextlib.redirect_stdout(output):
            exec(code, namespace)  # noqa: S102 - running the README's code is the point
    except ExpectationFailed as failed:
        return PythonOutcome((failed.line, str(failed)), output.getvalue())
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt):
            raise
        return PythonOutcome(_located(error, block), output.getvalue())
    return PythonOutcome(None, output.getvalue())


def _located(error: BaseException, block: Block) -> tuple[int, str]:
    """The README line an exception came from (the innermost README frame) and its story."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == "README.md"]
    line = frames[-1].lineno if frames and frames[-1].lineno else block.first_line
    story = "".join(traceback.format_exception_only(type(error), error)).strip()
    return line, f"raised {story}"
