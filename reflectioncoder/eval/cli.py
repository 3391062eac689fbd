"""Score samples (or generate them first) on HumanEval(+), MBPP(+) or MultiPL-E, sandboxed.

examples:
  reflectioncoder evaluate --task humaneval --samples S.jsonl --json result.json
  reflectioncoder evaluate --task mbpp --model runs/demo/train/final --json mbpp.json
  reflectioncoder evaluate --task multiple-cpp --samples S.jsonl
  reflectioncoder evaluate --task multiple --samples S.jsonl   # every language; rows name theirs

Generated samples go beside --json (RESULT.samples.jsonl), to --save-samples, or into the run
folder of a trained model (RUN/eval/, with the result); never silently into the current folder.

exit status: 0 scored; 1 a file or folder given cannot be used (one line names it); 2 a bad
argument; 3 nothing scored because the toolchain of the MultiPL-E language(s) asked for is not
installed here (`reflectioncoder eval-setup` installs it), so a script scoring many languages
can tell "skipped" from a failure; 130 interrupted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reflectioncoder.eval import multiple as ml
from reflectioncoder.eval import prompts as pr


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """What to score (a samples file, or a model to generate them), how, and where to write."""
    languages = ", ".join(ml.LANGUAGES)
    parser.add_argument(
        "--task",
        required=True,
        help=f"humaneval | mbpp | multiple (every language that runs here) | multiple-LANG, "
        f"LANG one of: {languages}",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples", type=Path, help="jsonl of {task_id, completion}: score these")
    src.add_argument("--model", help="model folder (or name, with --base-url): generate first")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="evaluation data (default: $REFLECTIONCODER_DATA_DIR or ../shared/evaldata)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the full result here")
    parser.add_argument(
        "--parallel", type=int, default=2, help="programs scored at once, each in its own sandbox"
    )
    parser.add_argument("--base-only", action="store_true", help="skip the plus tests")
    parser.add_argument(
        "--languages",
        nargs="+",
        default=None,
        metavar="LANG",
        help="--task multiple: only these languages (default: those the samples name, or all "
        "that run here with --model)",
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N tasks (N >= 1)")
    parser.add_argument(
        "--k",
        type=int,
        nargs="+",
        default=None,
        help="pass@k to report, each k <= samples per task (default: those of 1, 10, 100 that "
        "the samples allow)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or lines")
    _add_generation_arguments(parser)


class _KeyOnCommandLine(argparse.Action):
    """``--api-key``, removed: a command line is readable by every process on the machine (a
    MultiPL-E sample could print it into its result). The key comes from $OPENAI_API_KEY."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(
            "--api-key is no longer taken (a command line is readable by every process on the "
            "machine): set OPENAI_API_KEY in the environment instead, as build-data reads it"
        )


def _add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    gen = parser.add_argument_group("generation (with --model)")
    gen.add_argument(
        "--backend",
        choices=("hf", "vllm", "openai"),
        default="hf",
        help="transformers on a local folder, vLLM, or an OpenAI-compatible server",
    )
    gen.add_argument(
        "--base-url",
        default=None,
        help="OpenAI-compatible server (backend openai); its key, if it needs one, is read from "
        "$OPENAI_API_KEY (as build-data reads it: never on the command line, which every process "
        "can read)",
    )
    gen.add_argument("--api-key", nargs="?", action=_KeyOnCommandLine, help=argparse.SUPPRESS)
    gen.add_argument(
        "--prompt-format",
        choices=pr.PROMPT_FORMATS,
        default="spec",
        help="spec: SPEC §5's prompt (the paper's; for models trained here); chat: the same "
        "request through the model's own chat template, for instruct models (the reply opened "
        "with a python fence; the model writes the whole function)",
    )
    gen.add_argument("--n-samples", type=int, default=1, help="samples per task")
    gen.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)"
    )
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1]")
    gen.add_argument("--max-new-tokens", type=int, default=1024, help="tokens per completion")
    gen.add_argument("--batch-size", type=int, default=8, help="prompts per generate() call")
    gen.add_argument("--device", default=None, help="cpu | cuda (default: cuda when present)")
    gen.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for generation (default: the cores this process may use, its "
        "affinity and cgroup CPU quota, less those other programs keep busy; OMP_NUM_THREADS "
        "when set)",
    )
    gen.add_argument("--tensor-parallel", type=int, default=1, help="vLLM tensor parallelism")
    gen.add_argument(
        "--seed", type=int, default=0, help="the sampling seed (torch's, or the server's seed)"
    )
    gen.add_argument(
        "--save-samples",
        type=Path,
        default=None,
        help="where generated samples go (default: beside --json, or RUN/eval/ for a model "
        "inside a run folder)",
    )


def generation_defaults() -> dict[str, object]:
    """Each generation flag's default (``--temperature``: 0.0): what a flag the user did not
    give holds, so one given with ``--samples``, where nothing is generated, can be named."""
    parser = argparse.ArgumentParser(add_help=False)
    _add_generation_arguments(parser)
    given = vars(parser.parse_args([]))
    return {"--" + dest.replace("_", "-"): value for dest, value in given.items()}


def main(args: argparse.Namespace) -> int:
    from reflectioncoder.eval.pipeline import evaluate
    from reflectioncoder.eval.request import EvalRequest

    return evaluate(EvalRequest.from_args(args))
