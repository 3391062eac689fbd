"""Buggy first attempts made by mutating a reference solution's syntax tree.

Five kinds of mistake, the ones people make: ``off_by_one`` (a bound or constant one away),
``wrong_operator`` (``+`` for ``-``, ...), ``wrong_comparison`` (``<`` for ``<=``, ...),
``missing_case`` (an edge case or a condition left out) and ``wrong_return`` (the wrong value
returned). Whether a mutant is really wrong is never assumed: the builder runs it with the tests
in the sandbox and keeps it only when it fails.
"""

from __future__ import annotations

import ast
import difflib
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

KINDS = ("off_by_one", "wrong_operator", "wrong_comparison", "missing_case", "wrong_return")

_CMP_SWAPS: dict[type, tuple[type, ...]] = {
    ast.Lt: (ast.LtE, ast.Gt),
    ast.LtE: (ast.Lt,),
    ast.Gt: (ast.GtE, ast.Lt),
    ast.GtE: (ast.Gt,),
    ast.Eq: (ast.NotEq,),
    ast.NotEq: (ast.Eq,),
    ast.In: (ast.NotIn,),
    ast.NotIn: (ast.In,),
}
_OP_SWAPS: dict[type, tuple[type, ...]] = {
    ast.Add: (ast.Sub, ast.Mult),
    ast.Sub: (ast.Add,),
    ast.Mult: (ast.Add,),
    ast.Mod: (ast.FloorDiv,),
    ast.FloorDiv: (ast.Mod,),
}


@dataclass(frozen=True)
class Edit:
    """What a mutation changed, as source lines (dedented): ``correct`` became ``wrong``."""

    kind: str
    correct: tuple[str, ...]
    wrong: tuple[str, ...]


@dataclass(frozen=True)
class Mutant:
    """A mutated program: ``code``, the candidate ``sites`` applied, and its ``edits``."""

    code: str
    sites: tuple[int, ...]
    edits: tuple[Edit, ...]


def _is_int(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def _plus_minus_one(node: ast.expr) -> ast.expr | None:
    """``x`` when node is ``x + 1`` or ``x - 1``, else None."""
    if (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, (ast.Add, ast.Sub))
        and _is_int(node.right)
        and node.right.value == 1
    ):
        return node.left
    return None


def _candidates(tree: ast.Module) -> list[tuple[str, Callable[[], None]]]:
    """Every single-site mutation of ``tree`` as (kind, apply-in-place), in a fixed order."""
    nodes = list(ast.walk(tree))
    sites = _Sites(_assigned_names(nodes))
    for node in nodes:
        sites.comparison_or_operator(node)
        sites.numbers_and_returns(node)
        sites.missing_cases(node)
    return sites.out


def _setter(obj: object, attr: str, value: object) -> Callable[[], None]:
    return lambda: setattr(obj, attr, value)


def _item_setter(seq: list, index: int, value: object) -> Callable[[], None]:
    return lambda: seq.__setitem__(index, value)


def _assigned_names(nodes: list[ast.AST]) -> list[str]:
    """Values a wrong return could plausibly hand back: parameters and assigned variables."""
    assigned: list[str] = []
    for node in nodes:
        if isinstance(node, ast.arg):
            name = node.arg
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            name = node.id
        else:
            continue
        if name not in assigned and name != "_":
            assigned.append(name)
    return assigned


class _Sites:
    """The mutations found so far, in the order they are found (``out``)."""

    def __init__(self, assigned: list[str]) -> None:
        self.assigned = assigned
        self.out: list[tuple[str, Callable[[], None]]] = []

    def off_by_one(
        self, holder: object, attr: str | None, index: int | None, expr: ast.expr
    ) -> None:
        inner = _plus_minus_one(expr)
        if _is_int(expr):
            alts: list[ast.expr] = [ast.Constant(expr.value + d) for d in (1, -1)]
        elif inner is not None:
            alts = [inner]
        else:
            alts = [ast.BinOp(expr, op(), ast.Constant(1)) for op in (ast.Sub, ast.Add)]
        for alt in alts:
            if attr is not None:
                self.out.append(("off_by_one", _setter(holder, attr, alt)))
            else:
                self.out.append(("off_by_one", _item_setter(holder, index, alt)))

    def comparison_or_operator(self, node: ast.AST) -> None:
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                for alt in _CMP_SWAPS.get(type(op), ()):
                    self.out.append(("wrong_comparison", _item_setter(node.ops, i, alt())))
            for i, comp in enumerate(node.comparators):
                if _is_int(comp):
                    self.off_by_one(node.comparators, None, i, comp)
        elif isinstance(node, (ast.BinOp, ast.AugAssign)):
            for alt in _OP_SWAPS.get(type(node.op), ()):
                self.out.append(("wrong_operator", _setter(node, "op", alt())))

    def numbers_and_returns(self, node: ast.AST) -> None:
        """Off-by-one in range bounds, indices, slices and integer assignments; a return of
        the other bool, another variable or the number plus one."""
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "range":
                for i, arg in enumerate(node.args):
                    self.off_by_one(node.args, None, i, arg)
        elif isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Slice):
            if _is_int(node.slice) or _plus_minus_one(node.slice) is not None:
                self.off_by_one(node, "slice", None, node.slice)
        elif isinstance(node, ast.Slice):
            for attr in ("lower", "upper"):
                value = getattr(node, attr)
                if value is not None and _is_int(value):
                    self.off_by_one(node, attr, None, value)
        elif isinstance(node, ast.Assign) and _is_int(node.value):
            self.off_by_one(node, "value", None, node.value)
        elif isinstance(node, ast.Return) and node.value is not None:
            value = node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, bool):
                self.out.append(
                    ("wrong_return", _setter(node, "value", ast.Constant(not value.value)))
                )
            elif isinstance(value, ast.Name):
                for other in [n for n in self.assigned if n != value.id][:2]:
                    self.out.append(("wrong_return", _setter(node, "value", ast.Name(other))))
            elif _is_int(value):
                self.out.append(
                    ("wrong_return", _setter(node, "value", ast.Constant(value.value + 1)))
                )

    def missing_cases(self, node: ast.AST) -> None:
        """Statement lists: leave out an early-return edge case, a condition, or an else
        branch."""
        for attr in ("body", "orelse"):
            stmts = getattr(node, attr, None)
            if not isinstance(stmts, list) or not isinstance(node, (ast.stmt, ast.Module)):
                continue
            for i, stmt in enumerate(stmts):
                if not isinstance(stmt, ast.If):
                    continue
                returns = isinstance(stmt.body[-1], ast.Return)
                if returns and not stmt.orelse and len(stmts) > 1:
                    self.out.append(("missing_case", _deleter(stmts, i)))
                elif not returns and not stmt.orelse:
                    self.out.append(("missing_case", _inliner(stmts, i)))
                if stmt.orelse:
                    self.out.append(("missing_case", _setter(stmt, "orelse", [])))


def _deleter(stmts: list, index: int) -> Callable[[], None]:
    target = stmts[index]
    return lambda: stmts.remove(target)


def _inliner(stmts: list, index: int) -> Callable[[], None]:
    target = stmts[index]

    def apply() -> None:
        i = stmts.index(target)
        stmts[i : i + 1] = target.body

    return apply


def site_kinds(code: str) -> list[str]:
    """The kind of each single-site mutation of ``code``, by site index."""
    return [kind for kind, _ in _candidates(ast.parse(code))]


def _edit(kind: str, before: str, after: str) -> Edit:
    a, b = before.splitlines(), after.splitlines()
    correct: list[str] = []
    wrong: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b).get_opcodes():
        if tag != "equal":
            correct += a[i1:i2]
            wrong += b[j1:j2]
    # Dedented, relative indentation kept: a left-out `if` block still reads as code.
    dedent = lambda lines: tuple(textwrap.dedent("\n".join(lines)).splitlines())
    return Edit(kind, dedent(correct), dedent(wrong))


def apply_mutations(code: str, sites: tuple[int, ...] | list[int]) -> Mutant:
    """Apply the single-site mutations ``sites`` (indices from :func:`site_kinds`) to ``code``.

    The result is normalised through ``ast.unparse``, as the reference solutions are. Each edit
    is described against the reference alone, so fixing one of several bugs reverts one edit.
    """
    tree = ast.parse(code)
    candidates = _candidates(tree)
    for site in sites:
        if not 0 <= site < len(candidates):
            raise ValueError(f"sites: index {site} out of range 0..{len(candidates) - 1}")
    for site in sites:
        candidates[site][1]()
    mutated = ast.unparse(ast.fix_missing_locations(tree))
    reference = ast.unparse(ast.parse(code))
    edits = []
    for site in sites:
        single = ast.parse(code)
        cands = _candidates(single)
        cands[site][1]()
        edits.append(_edit(cands[site][0], reference, ast.unparse(single)))
    return Mutant(mutated, tuple(sites), tuple(edits))
