"""SIGTERM during the steps (a preemption, ``scancel``, a job's time limit, ``docker stop``,
torchrun passing on its own SIGTERM): the step under way is finished, a checkpoint of it saved,
then the run stops as before (``terminated``, exit 143), instead of stopping mid-step and losing
every step since the last ``checkpoint.save_every``. Schedulers give that time before SIGKILL
(Slurm's KillWait and Kubernetes' grace period 30 s, torchrun 30 s, ``docker stop`` 10 s); a
SIGKILL that comes first leaves the save's ``.tmp-step-*`` folder and the checkpoint before it
whole, as any kill does. A SIGTERM after the first changes nothing: Slurm signals every process
of the job, torchrun's agent then passes its own on, so each rank gets two at once. Ctrl-C stops
at once.

Every rank gets the signal, not at the same moment: each notes it, and the note is summed with
the step's statistics in the step's one all-reduce (``Trainer.train_step``), so every rank
learns it at the same step and they save together (DeepSpeed's save is collective)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator

from reflectioncoder.errors import Terminated

log = logging.getLogger("reflectioncoder.train")


@contextlib.contextmanager
def sigterm_at_step_end(is_main: bool) -> Iterator[Callable[[], bool]]:
    """Inside, SIGTERM is noted, not raised; yields whether one was. Outside the main thread
    (which alone takes signals), nothing changes."""
    noted = threading.Event()

    def note(signum: int, frame: object) -> None:
        if is_main and not noted.is_set():
            log.warning("SIGTERM: finishing this step and saving a checkpoint of it, then "
                        "stopping (Ctrl-C or SIGKILL stops now)")  # fmt: skip
        noted.set()

    if threading.current_thread() is not threading.main_thread():
        yield noted.is_set
        return
    previous = signal.signal(signal.SIGTERM, note)
    try:
        yield noted.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)


def save_and_stop(save: Callable[[], object] | None, step: int, is_main: bool) -> None:
    """A rank got SIGTERM: the step done saved (``save``: None when the run saves nothing),
    then stop (``Terminated``, saying where ``--resume`` continues from)."""
    saved = save() if save is not None else None
    if saved is None:
        raise Terminated
    if is_main:
        log.warning("SIGTERM: saved %s; --resume continues from it", saved)
    raise Terminated(f"step {step} saved: --resume continues from {saved}")
