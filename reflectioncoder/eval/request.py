"""What one ``reflectioncoder evaluate`` run is asked to do: a frozen record built once from
the command line (its values checked there, each error naming its flag), read by every step."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

from reflectioncoder.errors import (
    UsageError,
    refuse_overwriting_input,
    require_file,
    require_model_folder,
    require_writable_output,
)
from reflectioncoder.eval import tasks as tk


@dataclass(frozen=True)
class Decoding:
    """Generation settings (``--model``); the field names are ``GenerationConfig``'s."""

    max_new_tokens: int
    temperature: float
    top_p: float
    n: int  # samples per task
    batch_size: int
    seed: int


@dataclass(frozen=True)
class EvalRequest:
    """One evaluation: which benchmark, whose samples (a file, or a model to generate them),
    how to score and report them."""

    task: str  # humaneval | mbpp | multiple | multiple-LANG
    samples: Path | None  # a samples file to score, or None: generate with ``model``
    model: str | None
    data_dir: Path
    json: Path | None
    parallel: int
    base_only: bool
    languages: tuple[str, ...] | None  # --task multiple: only these
    limit: int | None  # only the first N tasks
    k: tuple[int, ...] | None  # pass@k asked for; None: those of 1, 10, 100 the samples allow
    progress: bool
    backend: str  # hf | vllm | openai
    base_url: str | None
    api_key: str | None
    prompt_format: str  # spec | chat
    device: str | None
    threads: int | None
    tensor_parallel: int
    save_samples: Path | None
    decoding: Decoding

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvalRequest:
        """The request the parsed command line makes; a UsageError names a bad flag."""
        check_arguments(args)
        data_dir = args.data_dir or tk.default_data_dir()
        if data_dir is None:
            raise UsageError("--data-dir not given and ../shared/evaldata not found")
        derived = {"data_dir", "api_key", "k", "languages", "progress", "decoding"}
        as_given = {f.name for f in fields(cls)} - derived
        return cls(
            **{name: getattr(args, name) for name in as_given},
            data_dir=data_dir,
            api_key=os.environ.get("OPENAI_API_KEY"),
            k=tuple(args.k) if args.k is not None else None,
            languages=tuple(args.languages) if args.languages else None,
            progress=not args.no_progress,
            decoding=Decoding(
                args.max_new_tokens,
                args.temperature,
                args.top_p,
                args.n_samples,
                args.batch_size,
                args.seed,
            ),
        )

    @property
    def python_only(self) -> bool:
        """Only Python programs run (what the fallback sandbox level can promise depends on it)."""
        return self.task in ("humaneval", "mbpp", "multiple-python")

    def samples_out(self) -> Path:
        """Where generated samples go: --save-samples, beside --json, or RUN/eval/ for a model
        inside a run folder (RUN/final, RUN/checkpoints/step-N/model)."""
        if self.save_samples is not None:
            return self.save_samples
        if self.json is not None:
            return self.json.with_suffix(".samples.jsonl")
        inside = self._in_run_folder("samples", ".jsonl")
        if inside is not None:
            return inside
        raise UsageError(
            "give --json RESULT or --save-samples FILE: where should the generated samples go?"
        )

    def result_out(self) -> Path | None:
        """Where the result goes: --json, or beside the samples in RUN/eval/ for a model inside
        a run folder (the scores and every sample's verdict kept, not only printed)."""
        if self.json is not None or self.samples is not None or self.save_samples is not None:
            return self.json
        return self._in_run_folder("result", ".json")

    def _in_run_folder(self, kind: str, ext: str) -> Path | None:
        """RUN/eval/KIND-TASK.EXT for a model inside a run folder: RUN/final, or with the
        checkpoint's name for RUN/checkpoints/step-N/model (so that evaluating a checkpoint
        does not replace the final model's samples and result); None elsewhere."""
        if self.model is None:
            return None
        model = Path(self.model).resolve()
        if (model.parent / "config.yaml").is_file():
            return model.parent / "eval" / f"{kind}-{self.task}{ext}"
        run = model.parent.parent.parent
        if (run / "config.yaml").is_file():
            return run / "eval" / f"{kind}-{self.task}-{model.parent.name}{ext}"
        return None


def check_arguments(args: argparse.Namespace) -> None:
    """Argument values argparse cannot check alone: a UsageError naming the flag."""
    positive = {
        "--limit": args.limit,
        "--parallel": args.parallel,
        "--n-samples": args.n_samples,
        "--max-new-tokens": args.max_new_tokens,
        "--batch-size": args.batch_size,
        "--tensor-parallel": args.tensor_parallel,
        "--threads": args.threads,
    }
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise UsageError(f"{flag}: expected a number >= 1, got {value}")
    if args.seed < 0:
        raise UsageError(f"--seed: expected a seed >= 0, got {args.seed}")
    cores = os.cpu_count() or 1
    if args.threads is not None and args.threads > cores:  # torch crashes far above
        raise UsageError(f"--threads: expected at most the {cores} cores here, got {args.threads}")
    for k in args.k or []:
        if k < 1:
            raise UsageError(f"--k: expected numbers >= 1, got {k}")
        if args.model is not None and k > args.n_samples:
            raise UsageError(
                f"--k {k}: needs at least {k} samples per task; --n-samples is {args.n_samples}"
            )
    if not 0 <= args.temperature < math.inf:  # nan and inf too
        raise UsageError(f"--temperature: expected a finite number >= 0, got {args.temperature}")
    if args.n_samples > 1 and args.temperature == 0 and args.model is not None:
        raise UsageError(
            f"--n-samples {args.n_samples} needs --temperature > 0 (greedy decoding gives "
            f"{args.n_samples} identical samples)"
        )
    if args.languages and args.task != "multiple":  # ignored there: say so rather than score
        raise UsageError(f"--languages: only with --task multiple, not --task {args.task}")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p: expected a value in (0, 1], got {args.top_p}")
    if args.samples is not None:
        require_file(args.samples, "samples file", field="--samples")
    for flag in ("--json", "--save-samples"):  # found now, not after hours of generation
        where = getattr(args, flag[2:].replace("-", "_"))
        if where is not None:
            require_writable_output(where, flag)
    _refuse_ignored_generation_flags(args)
    refuse_overwriting_input(
        args.json, "--json", {"--samples": args.samples, "--save-samples": args.save_samples}
    )
    _refuse_writing_into_the_model(args)
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise UsageError("folder not found", file=args.data_dir, field="--data-dir")
    if args.model is not None and args.backend != "openai":
        require_model_folder(args.model, "--model", need="both")
    if args.model is not None and args.backend == "vllm":  # found now, not after loading data
        from reflectioncoder.generate import vllm_available

        if not vllm_available():
            raise UsageError("--backend vllm: vllm is not installed (pip install vllm)")
    if args.model is not None and args.backend == "openai" and not args.base_url:
        raise UsageError("--backend openai needs --base-url")
    if args.base_url is not None and not args.base_url.startswith(("http://", "https://")):
        raise UsageError(f"expected an http(s) URL, got {args.base_url!r}", field="--base-url")
    if args.prompt_format == "chat" and (args.backend == "openai" or args.task.startswith("mult")):
        raise UsageError("--prompt-format chat: HumanEval and MBPP with --backend hf or vllm only")
    if args.device is not None and args.model is not None:
        check_device(args.device)


def _refuse_ignored_generation_flags(args: argparse.Namespace) -> None:
    """A flag that would change nothing is refused, naming it, rather than dropped: generation
    flags with --samples (nothing is generated), --base-url off the openai backend (the model
    would run here, not on that server), --tensor-parallel off vLLM."""
    from reflectioncoder.eval.cli import generation_defaults

    if args.samples is not None:
        for flag, default in generation_defaults().items():
            if getattr(args, flag[2:].replace("-", "_")) != default:
                raise UsageError(
                    "only with --model (it sets how samples are generated); --samples are "
                    "scored as they are",
                    field=flag,
                )
        return
    if args.base_url is not None and args.backend != "openai":
        raise UsageError(
            f"needs --backend openai (--backend {args.backend} runs --model here, not on "
            "that server)",
            field="--base-url",
        )
    if args.tensor_parallel != 1 and args.backend != "vllm":
        raise UsageError(f"needs --backend vllm, not --backend {args.backend}",
                         field="--tensor-parallel")  # fmt: skip


def _refuse_writing_into_the_model(args: argparse.Namespace) -> None:
    """--json or --save-samples naming a file of the --model folder (its config.json, its
    README.md) would replace it with a result: found now, before the model is touched."""
    model = Path(args.model) if args.model is not None and args.backend != "openai" else None
    if model is None or not model.is_dir():
        return
    for flag in ("--json", "--save-samples"):
        where = getattr(args, flag[2:].replace("-", "_"))
        if (
            where is not None
            and Path(where).is_file()
            and model.resolve() in Path(where).resolve().parents
        ):
            raise UsageError(
                "is a file of the --model folder: the output would overwrite it; give another name",
                file=where,
                field=flag,
            )


def check_device(device: str) -> None:
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: this torch build or machine has no CUDA device")
