"""Check mode without an oracle: the tests run to their end whatever the program answered.

If the harness stopped at the first failing assert, the program would learn from whether request
k+1 ever came that answer k was right, one bit per call; copies of one program that share any
channel (a file, a counter) could then search for the expected outputs. So every statement of the
tests' code runs: a statement that fails (an assert, or any exception) is recorded and the next
one runs. Statements in function, loop, `if` and `with` bodies are guarded one by one; a `try`
statement is guarded whole (its own `except` clauses decide what it expects), and class bodies are
left alone. Assert messages are dropped: they run only when the assert fails, and HumanEval's call
the program again (`assert f(1) == True, "..." + str(f(1))`). The first failure is the verdict. What remains is inside one statement: a short-circuit
(`assert f(a) == 1 and f(b) == 2`, `all(...)`) skips the rest of that statement only. No HumanEval
or MBPP test has one (tests/test_sandbox_oracle.py checks the sequence of calls on every problem).
"""
from __future__ import annotations

import ast

RECORD, CATCH, CAUGHT = "__dlm_failed__", "__dlm_catch__", "__dlm_failure__"
INJECTED = (RECORD, CATCH)  # the names the rewritten tests read that the harness provides
_UNGUARDED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom,
              ast.Global, ast.Nonlocal, ast.Pass, ast.Break, ast.Continue)


class Failures:
    """Records the first failure of the tests that happened while the session was still whole (a
    failure after the session broke is a consequence of the breakage, which is then the verdict)."""

    def __init__(self, session):
        self.session, self.first = session, None

    def __call__(self, error: BaseException) -> None:
        if self.first is None and not self.session.broken:
            self.first = error

    def names(self) -> dict:
        """What the rewritten tests need in their namespace."""
        return dict(zip(INJECTED, (self, Exception)))


def every_statement(source: str, filename: str = "tests.py"):
    """Compile `source` so that each statement runs even when an earlier one failed."""
    tree = _Guard().visit(ast.parse(source, filename))
    return compile(ast.fix_missing_locations(tree), filename, "exec", dont_inherit=True)


class _Guard(ast.NodeTransformer):
    def _block(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out = []
        for stmt in body:
            stmt = self.visit(stmt)
            out.append(stmt if isinstance(stmt, _UNGUARDED) else _guarded(stmt))
        return out

    def visit_Module(self, node):
        node.body = self._block(node.body)
        return node

    def visit_FunctionDef(self, node):
        node.body = self._block(node.body)
        return node

    def visit_For(self, node):
        node.body, node.orelse = self._block(node.body), self._block(node.orelse)
        return node

    def visit_With(self, node):
        node.body = self._block(node.body)
        return node

    def visit_Assert(self, node):  # the message runs only on failure: a call in it would tell
        node.msg = None
        return node

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_AsyncFor = visit_While = visit_If = visit_For
    visit_AsyncWith = visit_With

    def generic_visit(self, node):  # try, class, match, expressions: as they are
        return node


def _guarded(stmt: ast.stmt) -> ast.Try:
    """try: <stmt> / except Exception as e: record(e)"""
    record = ast.Expr(ast.Call(ast.Name(RECORD, ast.Load()), [ast.Name(CAUGHT, ast.Load())], []))
    handler = ast.ExceptHandler(type=ast.Name(CATCH, ast.Load()), name=CAUGHT, body=[record])
    return ast.copy_location(ast.Try(body=[stmt], handlers=[handler], orelse=[], finalbody=[]), stmt)
