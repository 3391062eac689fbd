"""Process groups and collectives: where this process sits (``setup``: rank, world, device,
the process group the launcher asks for), the torch threads it runs, and the few collectives
the trainer and checkpoints call (``all_reduce_sum``, ``barrier``, ``broadcast_object``,
``gathered_params`` for ZeRO-3 partitioned parameters). One process: each is a no-op.

The engines live beside it: ``engine.py`` (their interface and ``make_engine``),
``local_engine.py``, ``deepspeed_engine.py`` (with ``deepspeed_config.py``, its JSON and the
ZeRO-3 helpers) and ``fsdp_engine.py``.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import io
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from reflectioncoder.config import DistributedConfig
from reflectioncoder.cpus import thread_choice
from reflectioncoder.errors import ConfigError, UserError
from reflectioncoder.train.build_locks import clear_stale_build_locks


@dataclass
class DistInfo:
    """Where this process sits: its rank, the world, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    deepspeed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError as err:
        raise ValueError(f"environment {name}: expected an int, got {value!r}") from err


def setup(cfg: DistributedConfig, device: str = "auto") -> DistInfo:
    """Read the launcher's environment, pick the device, start the process group if needed."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(  # a value refused here: named where it was set (errors_located)
            "cuda requested but this torch build or machine has no CUDA device "
            "(torch.cuda.is_available() is False); auto, the default, trains on the CPU here",
            field="train.device",
        )
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise UserError(
            f"rank {rank} is local rank {local_rank}, but this machine shows "
            f"{torch.cuda.device_count()} GPU(s) (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): launch at most that many "
            "processes per node (--nproc_per_node / --num_gpus)",
            field="train.device",
        )
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    else:
        deepspeed_on_cpu_without_gpu()
    use_ds = cfg.backend == "deepspeed" or (cfg.backend == "auto" and world > 1)
    grouped = world > 1 or use_ds or cfg.backend == "fsdp"
    if grouped and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        timeout = datetime.timedelta(minutes=cfg.timeout_minutes)
        if world == 1:  # DeepSpeed or FSDP in one process without a launcher: a group of one
            for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
                os.environ.setdefault(key, value)
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        store = restart_store(timeout)
        if store is not None:  # DeepSpeed takes the group as it is (deepspeed.comm)
            dist.init_process_group(
                backend, store=store, rank=rank, world_size=world, timeout=timeout
            )
        if use_ds:
            import deepspeed

            quiet_deepspeed()
            clear_stale_build_locks(say=local_rank == 0)  # else torch waits on one forever
            if not use_cuda and local_rank == 0:
                announce_shm_op_build()
            with deepspeed_prints_quieted():
                deepspeed.init_distributed(
                    dist_backend=backend, auto_mpi_discovery=False, timeout=timeout
                )
        elif store is None:
            dist.init_process_group(backend, timeout=timeout)
    return DistInfo(rank, world, local_rank, dev, use_ds)


def restart_store(timeout: datetime.timedelta) -> dist.Store | None:
    """torchrun's store for this attempt of its ranks, on a restart (``--max-restarts``; None
    on the first). Its default rendezvous keeps one store for every attempt, and gloo's and
    NCCL's keys hold the same names in each: a rank that came to init_process_group later than
    another read the killed attempt's addresses (``Gloo connectFullMesh failed ...
    Connection refused``), and every restart failed so. Under a prefix of the attempt each
    attempt's keys are its own."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if attempt == "0" or "MASTER_ADDR" not in os.environ:
        return None
    store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
    return dist.PrefixStore(f"reflectioncoder/attempt-{attempt}", store)


# DeepSpeed's start-up noise, none of it a user's to act on (its logger's warnings and errors,
# and any other line it prints, stay): its CPU collectives op's "built successfully" print
# (deepspeed.comm.torch.build_shm_op), its BF16 optimizer's memory report (ZeRO-1 bf16 with fp32
# sums: see_memory_usage(force=True), 18 lines), and torch's FutureWarning for the collectives
# ZeRO calls by their deprecated names, a line pair a call: about 170 lines in a 2-step ZeRO-3
# run on 2 ranks (tests/test_leftovers_deepspeed_quiet.py).
DEEPSPEED_NOISE = re.compile(
    r"(DeepSpeed deepspeed\.ops\.\S+ built successfully"
    r"|(begin|end) bf16_ ?optimizer|(before|after) initializing group \d+"
    r"|MA [\d.]+ GB +Max_MA [\d.]+ GB +CA [\d.]+ GB +Max_CA [\d.]+ GB *"
    r"|CPU Virtual Memory: +used = [\d.]+ GB, percent = [\d.]+%)\n?"
)
_DEEPSPEED_DEPRECATED = r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is"


def deepspeed_on_cpu_without_gpu() -> None:
    """``DS_ACCELERATOR=cpu`` where torch sees no GPU: what DeepSpeed would detect, minus the
    warning its first import prints (a config check imports it before the run starts)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def quiet_deepspeed() -> None:
    """Hide torch's deprecation of the collectives DeepSpeed's ZeRO calls (ours call none)."""
    warnings.filterwarnings("ignore", _DEEPSPEED_DEPRECATED, FutureWarning)


@contextlib.contextmanager
def deepspeed_prints_quieted(noise: re.Pattern = DEEPSPEED_NOISE) -> Iterator[None]:
    """What DeepSpeed prints inside goes to stdout afterwards, less the lines ``noise`` matches
    whole (its logger holds its own reference to stdout: its lines are untouched)."""
    stdout, printed = sys.stdout, io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        lines = printed.getvalue().splitlines(True)
        stdout.write("".join(line for line in lines if not noise.fullmatch(line)))


def shm_op_to_build() -> str | None:
    """The folder DeepSpeed will compile its CPU collectives op in (deepspeed_shm_comm, built by
    ``deepspeed.init_distributed`` on a CPU), when it is neither built there nor installed."""
    try:
        import deepspeed.ops
        from deepspeed.accelerator import get_accelerator
        from deepspeed.git_version_info import installed_ops
        from torch.utils.cpp_extension import _get_build_directory

        builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
        if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
            return None
        if installed_ops.get(builder.name, False):
            return None
        folder = _get_build_directory(builder.name, verbose=False)
    except Exception:  # another DeepSpeed layout: no word, as before
        return None
    return None if os.path.isfile(os.path.join(folder, f"{builder.name}.so")) else folder


def announce_shm_op_build() -> None:
    """Its first build prints nothing for minutes (about 2 on 2 busy cores): say why first."""
    folder = shm_op_to_build()
    if folder is not None:
        logging.getLogger("reflectioncoder.train").info(
            "DeepSpeed compiles its CPU collectives op (deepspeed_shm_comm) on first use, "
            "1-3 minutes once per machine; later runs load it from %s",
            folder,
        )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def set_threads(
    requested: int | None, local_ranks: int, run_threads: int | None = None, say: bool = True
) -> int:
    """Apply ``train.threads``; returns the number set. ``say``: log where the number comes
    from (rank 0), ``thread_setting``'s line."""
    threads, line = thread_setting(requested, local_ranks, run_threads)
    if say and line:
        logging.getLogger("reflectioncoder.train").info(line)
    torch.set_num_threads(threads)
    return threads


def thread_setting(
    requested: int | None, local_ranks: int, run_threads: int | None = None
) -> tuple[int, str | None]:
    """``train.threads`` and, when it was not given, the line that says where the number comes
    from. None: ``run_threads``, the number the run resumed from used (its steps then compute
    as they did: another number of threads sums in another order), else
    ``cpus.thread_choice`` (it depends on the load)."""
    threads, why = requested or run_threads, "as the run used before --resume"
    if threads is None:
        threads, why = thread_choice(local_ranks)
        why += "; set train.threads for the same number on every launch"
    if requested is not None:
        return threads, None
    return threads, f"train.threads: {threads} CPU thread(s) per rank ({why})"


def shut_down_if_failed(init: Callable[..., None]) -> Callable[..., None]:
    """``init`` (a constructor that calls ``setup``) made undone on failure: the process group it
    started is destroyed, so a caller that catches the error (a notebook, a test) can start one
    again; a group that was there before it ran is left alone."""

    @functools.wraps(init)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        was_started = dist.is_available() and dist.is_initialized()
        try:
            init(*args, **kwargs)
        except BaseException:
            if not was_started:
                shutdown()
            raise

    return wrapper


def shutdown() -> None:
    """Destroy the process group this module started (a no-op for one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op for one process); returns it."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (host objects: paths, plans)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def is_zero3_param(param: torch.nn.Parameter) -> bool:
    """True for a parameter partitioned by ZeRO-3 (its full data lives on no single rank)."""
    return hasattr(param, "ds_id")


@contextlib.contextmanager
def gathered_params(
    params: torch.nn.Parameter | list[torch.nn.Parameter], modifier_rank: int | None = 0
) -> Iterator[None]:
    """Inside the block, ZeRO-3 partitioned ``params`` are whole on every rank.

    With ``modifier_rank`` set, that rank's in-place edits are broadcast and re-partitioned on
    exit (e.g. mean-initialising new embedding rows); ``None`` gathers for reading only. Without
    ZeRO-3 it does nothing, so callers need not know how the model is sharded.
    """
    plist = [params] if isinstance(params, torch.nn.Parameter) else list(params)
    if not any(is_zero3_param(p) for p in plist):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(plist, modifier_rank=modifier_rank):
        yield


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """model.dtype -> torch dtype; auto = bf16 on GPU, fp32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]
