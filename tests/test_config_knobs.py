"""No dead knobs: every field of every config dataclass (the run's sections; the settings of
generation, of an evaluation and its decoding, of the sandbox's limits and of a server's
retries) is read by the product somewhere it changes what happens, not only where it is
defined, defaulted, checked (``__post_init__``), loaded (``config_loader``) or written into the
model card. A read is found by type, not by name (``.seed`` of a tokenizer is no
``train.seed``): ``cfg.optim.lr``, a name bound to a section (``optim = cfg.optim``, a
parameter annotated ``OptimConfig``, ``self.cfg = cfg`` in a class that took one), or a
property of the config class that reads the field and is read itself (``logging.trackers``),
or the whole record passed on field by field (``dataclasses.asdict(req.decoding)``)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import typing
from pathlib import Path

from reflectioncoder.cli import COMMANDS, _command_parser
from reflectioncoder.config import RunConfig
from reflectioncoder.eval.request import Decoding, EvalRequest
from reflectioncoder.eval.sandbox.records import Limits
from reflectioncoder.generate.config import GenerationConfig
from reflectioncoder.generate.endpoint import RetryPolicy

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {f.name: typing.get_type_hints(RunConfig)[f.name] for f in dataclasses.fields(RunConfig)}
# the run's sections, then the settings of generation, evaluation, the sandbox and a server
OTHERS = [GenerationConfig, EvalRequest, Decoding, Limits, RetryPolicy]
CONFIGS = {cls.__name__: cls for cls in [*SECTIONS.values(), *OTHERS]}
# Reading a field there is not using it: the loader checks it, the card describes it.
NOT_A_USE = ("reflectioncoder/config_loader.py", "reflectioncoder/train/model_card.py")
RUN_NAMES = {"cfg", "run", "config", "run_cfg"}  # what the code calls a RunConfig


def _product_sources() -> dict[str, str]:
    files = [*(ROOT / "reflectioncoder").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]
    sources = {}
    for path in sorted(files):
        name = str(path.relative_to(ROOT))
        if not name.startswith("reflectioncoder/testing/") and name not in NOT_A_USE:
            sources[name] = path.read_text(encoding="utf-8")
    return sources


class _Reads(ast.NodeVisitor):
    """(config class, attribute) -> where the product reads it, found by type."""

    def __init__(self, classes: dict[str, type], nested: dict[tuple, str]) -> None:
        self.classes, self.nested = classes, nested
        self.reads: dict[tuple[str, str], list[str]] = {}
        self.scopes: list[dict[str, str]] = [{}]
        self.where = ""

    def config_of(self, node: ast.expr) -> str | None:
        """The config class ``node`` evaluates to, or "RunConfig", or None."""
        if isinstance(node, ast.Attribute):  # cfg.optim, req.decoding: a config's config
            inner = self.nested.get((self.config_of(node.value), node.attr))
            if inner:
                return inner
        if isinstance(node, ast.BoolOp):  # policy or RetryPolicy()
            return next(filter(None, map(self.config_of, node.values)), None)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return node.func.id if node.func.id in self.classes else None
        if not isinstance(node, ast.Name | ast.Attribute):
            return None
        key = ast.unparse(node)  # cfg, self.cfg: what the scope bound, else by its name
        if key in self.scope:
            return self.scope[key]
        name = node.id if isinstance(node, ast.Name) else node.attr
        return "RunConfig" if name in RUN_NAMES else None

    @property
    def scope(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for scope in self.scopes:
            merged.update(scope)
        return merged

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scopes.append({})
        for _ in range(2):  # the first pass learns self.x = a config, the second reads
            self.generic_visit(node)
        self.scopes.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name == "__post_init__":  # a config checking its own values
            return
        bound = {}
        arguments = node.args
        for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
            hint = ast.unparse(arg.annotation).strip("'\"") if arg.annotation else ""
            named = [c for c in [*self.classes, "RunConfig"] if hint.split(" ")[0] == c]
            if named:
                bound[arg.arg] = named[0]
        self.scopes.append(bound)
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node: ast.Assign) -> None:
        config = self.config_of(node.value)
        if config:
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self.scopes[-1][target.id] = config
                elif isinstance(target, ast.Attribute):  # self.cfg = cfg: the class's
                    self.scopes[-2 if len(self.scopes) > 1 else -1][ast.unparse(target)] = config
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = ast.unparse(node.func)
        config = self.config_of(node.args[0]) if node.args else None
        if name in ("asdict", "dataclasses.asdict") and config in self.classes:
            for f in dataclasses.fields(self.classes[config]):  # each passed on by name
                self.reads.setdefault((config, f.name), []).append(f"{self.where}:{node.lineno}")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        config = self.config_of(node.value)
        if config in self.classes and isinstance(node.ctx, ast.Load):
            self.reads.setdefault((config, node.attr), []).append(f"{self.where}:{node.lineno}")
        self.generic_visit(node)


def _own_reads(classes: dict[str, type], sources: dict[str, str]) -> dict[tuple[str, str], set]:
    """(class, field) -> the names of the class's own methods and properties that read it."""
    own: dict[tuple[str, str], set] = {}
    for text in sources.values():
        for cls in ast.walk(ast.parse(text)):
            if not (isinstance(cls, ast.ClassDef) and cls.name in classes):
                continue
            for method in cls.body:
                if isinstance(method, ast.FunctionDef) and method.name != "__post_init__":
                    for node in ast.walk(method):
                        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "self":
                            own.setdefault((cls.name, node.attr), set()).add(method.name)
    return own


def _nested(classes: dict[str, type]) -> dict[tuple[str, str], str]:
    """(class, field) -> the config class that field holds: RunConfig's sections, a request's
    decoding settings."""
    nested = {}
    for name, cls in [("RunConfig", RunConfig), *classes.items()]:
        for field, hint in typing.get_type_hints(cls).items():
            inner = [a for a in (hint, *typing.get_args(hint)) if isinstance(a, type)]
            for held in inner:
                if held.__name__ in classes:
                    nested[(name, field)] = held.__name__
    return nested


def dead_fields(classes: dict[str, type], sources: dict[str, str]) -> list[str]:
    """The ``Class.field`` names nothing in ``sources`` reads (by type), in field order."""
    finder = _Reads(classes, _nested(classes))
    for name, text in sources.items():
        finder.where = name
        finder.visit(ast.parse(text))
    own = _own_reads(classes, sources)
    dead = []
    for name, cls in classes.items():
        for f in dataclasses.fields(cls):
            through = [m for m in own.get((name, f.name), ()) if (name, m) in finder.reads]
            if (name, f.name) not in finder.reads and not through:
                dead.append(f"{name}.{f.name}")
    return dead


def test_every_config_field_changes_something():
    assert len(CONFIGS) == 14
    assert dead_fields(CONFIGS, _product_sources()) == []


@dataclasses.dataclass
class _ToyConfig:
    used: int = 1
    checked_only: int = 2
    carded_only: int = 3
    via_property: int = 4
    property_unread: int = 5
    same_name_elsewhere: int = 6

    def __post_init__(self) -> None:
        assert self.checked_only > 0

    @property
    def doubled(self) -> int:
        return self.via_property * 2

    @property
    def never_read(self) -> int:
        return self.property_unread


TOY_SOURCES = {
    "toy/config.py": """
class _ToyConfig:
    def __post_init__(self):
        assert self.checked_only > 0
    @property
    def doubled(self):
        return self.via_property * 2
    @property
    def never_read(self):
        return self.property_unread
""",
    "toy/use.py": """
class Loop:
    def __init__(self, toy: _ToyConfig, model):
        self.toy = toy
        model.same_name_elsewhere = 1
    def step(self, cfg):
        section = self.toy
        return section.used + self.toy.doubled + cfg.model.same_name_elsewhere
""",
}


def test_the_finder_catches_a_dead_field():
    """The finder itself: a field only checked, only written in the card, read only through a
    property nothing reads, or whose name only other objects carry, is dead."""
    dead = dead_fields({"_ToyConfig": _ToyConfig}, TOY_SOURCES)
    assert dead == [
        "_ToyConfig.checked_only",
        "_ToyConfig.carded_only",
        "_ToyConfig.property_unread",
        "_ToyConfig.same_name_elsewhere",
    ]


def _namespace_reads(sources: dict[str, str]) -> set[str]:
    """The attributes read off a parsed command line: ``args.x``, ``getattr(args, "x")``."""
    reads = set()
    for text in sources.values():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "args":
                reads.add(node.attr)
            elif isinstance(node, ast.Call) and ast.unparse(node.func) == "getattr":
                if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                    reads.add(node.args[1].value)
    return reads


def test_every_flag_changes_something():
    """The command line's knobs: each flag --help shows is read by its command (evaluate's
    become ``EvalRequest`` fields by name, whose reads the test above checks)."""
    reads = _namespace_reads(_product_sources())
    request = {f.name for f in dataclasses.fields(EvalRequest)}
    unread = []
    for name, (module, _) in sorted(COMMANDS.items()):
        for action in _command_parser(name, importlib.import_module(module))._actions:
            if action.dest == "help" or action.help == argparse.SUPPRESS:
                continue
            if action.dest not in reads and not (name == "evaluate" and action.dest in request):
                unread.append(f"{name} {max(action.option_strings or [action.dest], key=len)}")
    assert not unread
