"""Every name the GPU-only code uses resolves on the CPU, so that a rename fails CI rather than
the one prepared GPU call (bench/gpu_call.sh; a lent GPU comes by chance, 15 minutes at most).

The code that only a GPU runs (tests/test_gpu_*.py's CUDA cases, bench/gpu_*.py's CUDA branches,
the suites' GPU rows) is read as text: every import in it (at the top or inside a function)
must import, every ``module.attr.attr`` chain on an imported module or class must exist, and
every ``monkeypatch.setattr(obj, "name")`` / ``delattr`` must find ``name`` on ``obj``. A
package that is optional on the GPU machine (flash-attn, FA3, FA4, the CuTe DSL, QuACK, Cut
Cross-Entropy) is not installed here: names under it are left out (the code skips without it).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
# The files the GPU call runs whose CUDA paths run nowhere else.
GPU_ONLY = (
    "tests/test_gpu_kernels.py",
    "tests/test_gpu_engines.py",
    "tests/test_gpu_capabilities.py",
    "tests/test_gpu_step_call_extrapolate.py",
    "bench/gpu_suite.py",
    "bench/gpu_step_call.py",
    "bench/profiles.py",
    "bench/bench_checkpointing.py",
    "bench/providers/train_step.py",
    "bench/providers/loss.py",
    "bench/providers/attention.py",
    "bench/providers/common.py",
    "bench/providers/mask.py",
    "bench/providers/packing.py",
    "bench/test_loss.py",
    "bench/test_attention.py",
    "bench/test_train_step.py",
    "bench/test_mask.py",
    "bench/test_packing.py",
    "bench/conftest.py",
    "bench/report.py",
    "bench/ablation.py",
    "bench/host_replay_profile.py",
)  # not bench/bench_host_replay.py: its children import the replayed commits' own modules
# (tests/test_host_replay.py runs its CPU path)
# Installed on a GPU only where carried (bench/README.md), and skipped without: not checked.
OPTIONAL = {
    "flash_attn", "flash_attn_interface", "flash_attn_4", "cutlass", "quack",
    "cut_cross_entropy", "cuda", "apache_tvm_ffi",
}  # fmt: skip
# Modules of installed packages that need an optional one (their import raises without it).
OPTIONAL_MODULES = ("liger_kernel.ops.cutedsl",)  # Liger's Hopper FLCE: the CuTe DSL


def _module_of(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[1:] if rel.parts[0] == "tests" else rel.parts
    return ".".join(parts)


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    if not node.level:
        return node.module or ""
    package = _module_of(path).split(".")[: -node.level]
    return ".".join(package + ([node.module] if node.module else []))


class Problem(Exception):
    pass


def _import(name: str):
    """The module ``name``; None when it is optional; Problem when it does not import."""
    if name.split(".")[0] in OPTIONAL or name.startswith(OPTIONAL_MODULES):
        return None
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if importlib.util.find_spec(name.split(".")[0]) is None:
            raise Problem(f"no module {name!r}") from e
        raise Problem(f"import {name}: {e}") from e


def _attribute(obj, name: str, where: str):
    """``obj.name`` (a submodule when ``obj`` is a package); Problem when there is none."""
    if hasattr(obj, name):
        return getattr(obj, name)
    if inspect.ismodule(obj) and hasattr(obj, "__path__"):  # a package: its submodule
        try:
            found = _import(f"{obj.__name__}.{name}")
        except Problem:
            found = None
        if found is not None:
            return found
    if inspect.isclass(obj) and name in _instance_fields(obj):
        return None  # an instance's field: its type is not followed
    raise Problem(f"{where}: {name!r} not found")


def _instance_fields(cls) -> set[str]:
    """Names an instance of ``cls`` has without the class having them: dataclass fields and
    annotations without a default."""
    names = set()
    for klass in cls.__mro__:
        names |= set(getattr(klass, "__annotations__", {}))
    return names


def _bindings(tree: ast.AST, path: Path) -> tuple[dict, list[str]]:
    """Name -> the object an import binds it to (every scope of the file), and the problems
    of the imports themselves."""
    bound, problems = {}, []
    for node in ast.walk(tree):
        try:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    module = _import(alias.name)
                    if alias.asname:
                        bound[alias.asname] = module
                    else:
                        top = alias.name.split(".")[0]
                        bound[top] = None if module is None else _import(top)
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(node, path)
                module = _import(source)
                for alias in node.names:
                    if module is None or alias.name == "*":
                        bound[alias.asname or alias.name] = None
                        continue
                    where = f"from {source} import {alias.name}"
                    bound[alias.asname or alias.name] = _attribute(module, alias.name, where)
        except Problem as e:
            problems.append(f"{path.relative_to(REPO)}:{node.lineno}: {e}")
    return bound, problems


def _rebound(tree: ast.AST) -> set[str]:
    """Names the file also binds otherwise (arguments, assignments, loops): their chains are
    left out, as the name may not be the import there."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def _chain(node: ast.Attribute) -> tuple[str, list[str]] | None:
    """``a.b.c`` -> ("a", ["b", "c"]); None when the chain does not start at a name."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return (node.id, attrs[::-1]) if isinstance(node, ast.Name) else None


def _follow(obj, attrs: list[str], where: str) -> None:
    """Each attribute of ``attrs`` in turn, while the object is a module or a class (an
    instance's attributes are not known from the text)."""
    for name in attrs:
        if obj is None or not (inspect.ismodule(obj) or inspect.isclass(obj)):
            return
        obj = _attribute(obj, name, f"{where}.{name}")
        where = f"{where}.{name}"


def _expression(node: ast.AST, bound: dict):
    """The object a ``name`` or ``name.attr...`` expression stands for (None: unknown)."""
    if isinstance(node, ast.Name):
        return bound.get(node.id)
    chain = _chain(node) if isinstance(node, ast.Attribute) else None
    if chain is None or chain[0] not in bound:
        return None
    obj = bound[chain[0]]
    for name in chain[1]:
        if obj is None or not (inspect.ismodule(obj) or inspect.isclass(obj)):
            return None
        obj = getattr(obj, name, None)
    return obj


def _patched(node: ast.Call, bound: dict, path: Path) -> str | None:
    """``monkeypatch.setattr(obj, "name", ...)`` / ``.delattr(obj, "name")`` (and their
    "module.attr" string form): the problem when ``obj`` lacks ``name``."""
    func = node.func
    if not (isinstance(func, ast.Attribute) and func.attr in ("setattr", "delattr")):
        return None
    args = node.args
    target = None
    if len(args) >= 2 and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str):
        target, name = _expression(args[0], bound), args[1].value
        label = f"{ast.unparse(args[0])}.{name}"
    elif args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
        dotted = args[0].value
        if "." not in dotted:
            return None
        module_name, name = dotted.rsplit(".", 1)
        try:
            target = _import(module_name)
        except Problem as e:
            return f"{path.relative_to(REPO)}:{node.lineno}: patched {dotted}: {e}"
        label = dotted
    if target is None or hasattr(target, name):
        return None
    return f"{path.relative_to(REPO)}:{node.lineno}: patched {label}: {name!r} not found"


def unresolved(path: Path) -> list[str]:
    """Every import, module / class attribute chain and patched attribute of ``path`` that
    does not resolve here."""
    tree = ast.parse(path.read_text(), str(path))
    bound, problems = _bindings(tree, path)
    rebound = _rebound(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            problem = _patched(node, bound, path)
            if problem:
                problems.append(problem)
        if not isinstance(node, ast.Attribute) or isinstance(node.ctx, ast.Store):
            continue
        chain = _chain(node)
        if chain is None or chain[0] not in bound or chain[0] in rebound:
            continue
        try:
            _follow(bound[chain[0]], chain[1], chain[0])
        except Problem as e:
            problems.append(f"{path.relative_to(REPO)}:{node.lineno}: {e}")
    return sorted(set(problems))


@pytest.fixture(scope="module", autouse=True)
def _importable():
    for folder in (REPO, REPO / "tests"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


@pytest.mark.parametrize("name", GPU_ONLY)
def test_every_name_the_gpu_code_uses_resolves(name) -> None:
    assert unresolved(REPO / name) == []


# tests/test_gpu_engines.py's cases that skip without CUDA even in the dry run (RC_TEST_DEVICE=cpu)
CUDA_ONLY = (
    "test_fsdp_engine_on_nccl_gives_the_local_engines_steps",
    "test_kept_outputs_on_cuda",
)
# What a torch without a GPU says at the first CUDA call (a CPU build, or a CUDA build with no
# driver), and the trainer's config check of train.device=cuda.
NO_CUDA = re.compile(r"not compiled with CUDA|no NVIDIA driver|cuda requested but|_cuda_\w+")


@pytest.mark.parametrize("name", CUDA_ONLY)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_cuda_only_cases_reach_their_first_cuda_call(name, compiled, monkeypatch, tmp_path):
    """Each CUDA-only case of tests/test_gpu_engines.py, called here with a CUDA device: everything
    before its first CUDA call runs (its imports, config overrides, helpers), and it stops
    there, for want of a GPU, rather than at a name or a config key that moved."""
    import test_gpu_engines as test_gpu

    if torch.cuda.is_available():
        pytest.skip("a GPU runs them for real (pytest -m gpu)")
    case = getattr(test_gpu, name)
    given = {"device": torch.device("cuda"), "seed": 0, "compiled": compiled,
             "monkeypatch": monkeypatch, "tmp_path": tmp_path}  # fmt: skip
    wanted = inspect.signature(case).parameters
    with pytest.raises(Exception) as stopped:
        case(**{k: v for k, v in given.items() if k in wanted})
    assert NO_CUDA.search(str(stopped.value)), repr(stopped.value)


def test_pipelined_host_optimizer_case_runs_on_the_cpu(monkeypatch):
    """The offloaded engine's CUDA case, its whole body on the CPU (plain copies both times):
    the engine's names it reads (``host.buckets``, ``host.copy_streams``, masters, moments)."""
    import test_gpu_engines as test_gpu

    test_gpu.test_pipelined_host_optimizer_equals_blocking_copies(
        torch.device("cpu"), 0, monkeypatch
    )


def test_fsdp_case_helpers_drive_an_engine_on_the_cpu():
    """The FSDP case's step and state helpers (the engine API: ``start_micro_batch``,
    ``backward``, ``finish_step``'s StepResult, the optimizer's state) on the one-process
    engine in bf16 on the CPU, with the case's own batches."""
    import test_gpu_engines as test_gpu
    from test_packed_rows import VOCAB

    from reflectioncoder.config_loader import load_config
    from reflectioncoder.model import build_tiny_llama, cast_weights
    from reflectioncoder.train import distributed
    from reflectioncoder.train.local_engine import LocalEngine
    from reflectioncoder.train.loss_module import ReflectionLossModule

    arch = "model.arch={hidden_size: 128, num_layers: 2, num_heads: 2, num_kv_heads: 1}"
    run = load_config(base="tiny", overrides=[arch, "model.dtype=bf16"])
    model = build_tiny_llama(VOCAB, seed=0, **test_gpu.LLAMA)
    cast_weights(model, "cpu", torch.bfloat16)
    info = distributed.DistInfo(0, 1, 0, torch.device("cpu"), deepspeed=False)
    engine = LocalEngine(ReflectionLossModule(model), run, info)
    steps = test_gpu._fsdp_steps(0, device="cpu")
    result = test_gpu._run_step(engine, steps[0])
    assert result.applied and result.stats[0] > 0 and result.grad_norm > 0
    after = test_gpu._fsdp_state(engine)
    assert not test_gpu._run_step(engine, steps[1], poison=True).applied
    assert all(torch.equal(a, b) for a, b in zip(after, test_gpu._fsdp_state(engine), strict=True))


def test_kept_outputs_case_measures_a_model_on_the_cpu(monkeypatch):
    """The kept-outputs case's measurement (``_kept_run``: forward, backward, the GEMM count,
    CUDA's memory counters, here stand-ins) on the case's packed inputs and model, on the CPU."""
    import test_gpu_engines as test_gpu
    from test_packed_rows import VOCAB

    from reflectioncoder.activation_checkpointing import apply_plan
    from reflectioncoder.model import build_tiny_llama

    for counter in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, counter, lambda: None)
    for counter in ("memory_allocated", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, counter, lambda: 0)
    batch = test_gpu._packed_inputs(0, tokens=64, sequences=4, device="cpu")
    model = build_tiny_llama(VOCAB, seed=0, **test_gpu.LLAMA)
    apply_plan(model, ("save_gemms",) * test_gpu.LLAMA["num_layers"])
    probe = torch.randn(64, test_gpu.LLAMA["hidden_size"])
    run = test_gpu._kept_run(model, batch, probe)
    assert run["gemms"]["mm"] > 0 and run["grads"] and run["held"] == run["peak"] == 0


def test_the_gpu_suite_runs_every_test_marked_gpu():
    """gpu_suite runs ``-m gpu`` over GPU_TESTS and CHECKS alone (collecting every test module
    would import what the GPU machine lacks): a case marked elsewhere would never run there."""
    from bench.gpu_suite import CHECKS, GPU_TESTS

    marker = re.compile(r"pytest\.mark\.gpu\b")
    marked = [p for p in sorted((REPO / "tests").glob("test_*.py")) if marker.search(p.read_text())]
    files = {path.split("::")[0] for path in (*GPU_TESTS, *CHECKS)}
    assert [str(p.relative_to(REPO)) for p in marked] == sorted(files)
