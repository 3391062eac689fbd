"""The model card: README.md in OUT/final/ and in each checkpoint's model/ folder.

Hugging Face's conventions: YAML metadata between ``---`` lines (``base_model``, ``tags``,
``library_name``, and ``model-index`` once ``reflectioncoder evaluate`` has scored the folder),
then sections: the base model, the method and its hyper-parameters, the data (files, counts and
the decontamination reports of ``prepare-data`` manifests), the training (steps, tokens,
hardware, time, the last logged losses) and the evaluation results. Only what the run set or
measured is written: a figure that was not measured is left out, never estimated.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import yaml

from reflectioncoder import __version__
from reflectioncoder.errors import UserError, atomic_write_text

if TYPE_CHECKING:  # evaluate imports this module: no config (or torch) import at run time
    from reflectioncoder.config import RunConfig

README = "README.md"
TAG = "reflectioncoder"
LOSS_KEYS = ("loss", "ce", "teacher_ce", "student_ce", "kl")
# Benchmark names of ``evaluate``'s score table -> Hugging Face dataset ids.
DATASETS = {
    "HumanEval": "openai/openai_humaneval",
    "HumanEval+": "evalplus/humanevalplus",
    "MBPP": "google-research-datasets/mbpp",
    "MBPP+": "evalplus/mbppplus",
}


def hardware(device: Any, world_size: int) -> str:
    """``2 x NVIDIA H200`` or ``1 x CPU (Intel Xeon ...)``: what the run trained on."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({cpu_model()})"
    return f"{world_size} x {name}"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_manifests(data_files: list[str]) -> dict[str, dict[str, Any]]:
    """The ``prepare-data`` manifest beside each data file that has one, read and checked once
    at start-up: a damaged one is one line naming it then, not a failed first save."""
    from reflectioncoder.data.prepare import manifest_path

    manifests = {}
    for file in data_files:
        path = manifest_path(file)
        if not path.is_file():
            continue
        try:
            manifest = json.loads(path.read_bytes().decode("utf-8"))
            _manifest_text(file, manifest)  # every field the card reads is there
        except UnicodeDecodeError as err:
            raise UserError(f"not UTF-8 (byte {err.start + 1})", file=path) from None
        except json.JSONDecodeError as err:
            raise UserError(f"invalid JSON: {err.msg}", file=path, line=err.lineno) from None
        except (KeyError, TypeError, AttributeError, IndexError) as err:
            raise UserError(
                f"not a prepare-data manifest ({type(err).__name__}: {err}); write it again "
                "with `reflectioncoder prepare-data` or remove it",
                file=path,
            ) from None
        manifests[file] = manifest
    return manifests


def _table(rows: list[tuple[str, Any]], head: tuple[str, str]) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows if v is not None]
    return "\n".join(lines)


def _method(cfg: RunConfig) -> str:
    o, t = cfg.optim, cfg.train
    rows = [
        ("mask strategies", ", ".join(cfg.mask.strategies)),
        ("block order", cfg.mask.block_order),
        ("student CE (distill)", cfg.mask.distill),
        ("KL divergence, teacher to student", cfg.mask.kl),
        ("loss normalisation", cfg.packing.normalisation),
        ("optimizer", f"AdamW, betas {tuple(o.betas)}, eps {o.eps}, weight decay {o.weight_decay}"),
        ("learning rate", o.lr),
        (
            "schedule",
            f"{o.schedule}, warm-up ratio {o.warmup_ratio}, min lr ratio {o.min_lr_ratio}",
        ),
        ("gradient clipping", o.grad_clip),
        ("samples per step", t.samples_per_step),
        ("tokens per step", t.tokens_per_step),
        ("epochs", t.epochs),
        ("max steps", t.max_steps),
        ("max sample length", cfg.data.max_len),
        ("micro-batch tokens", cfg.packing.max_tokens),
        ("dtype", cfg.model.dtype),
        ("gradient checkpointing", cfg.model.gradient_checkpointing),
        ("seed", t.seed),
    ]
    return _table(rows, ("hyper-parameter", "value"))


def _data(cfg: RunConfig, counts: dict[str, int], manifests: dict[str, dict[str, Any]]) -> str:
    parts = [
        "Files: " + ", ".join(f"`{f}`" for f in cfg.data.files),
        "",
        _table(
            [
                ("samples read", counts.get("loaded")),
                ("samples trained on (after upsampling)", counts.get("samples")),
                ("held out for the validation loss", counts.get("validation")),
                ("skipped as bad", counts.get("skipped_bad")),
                (
                    f"dropped as longer than {cfg.data.max_len} tokens",
                    counts.get("dropped_too_long"),
                ),
                ("upsampling", cfg.data.upsample),
            ],
            ("count", "value"),
        ),
    ]
    for file in cfg.data.files:
        if file in manifests:
            parts += _manifest_text(file, manifests[file])
    return "\n".join(parts)


def _manifest_text(file: str, manifest: dict[str, Any]) -> list[str]:
    """The card's lines on data ``file`` from its prepare-data ``manifest``."""
    parts = ["", f"`{file}` was written by `reflectioncoder prepare-data`:"]
    parts.append(
        f"{manifest['written']} rows from "
        + ", ".join(
            f"`{i['path']}` ({i['written']} of {i['read']} rows)" for i in manifest["inputs"]
        )
    )
    report = manifest.get("decontamination")
    if report is None:
        return parts + ["Not decontaminated (no benchmark index was given)."]
    action = "kept" if report["kept"] else "dropped"
    rows = [
        (b, f"{r['samples_matched']} samples matched {r['tasks_indexed']} tasks ({action})")
        for b, r in report["benchmarks"].items()
    ]
    return parts + [
        "",
        "Decontamination against the benchmarks:",
        "",
        _table(rows, ("benchmark", "matched")),
    ]


def _training(progress: dict[str, Any]) -> str:
    totals = progress.get("totals") or {}
    seconds = totals.get("seconds")
    rows = [
        ("optimizer steps", f"{progress['step']} of {progress['total_steps']}"),
        ("updates skipped (non-finite)", progress.get("skipped")),
        ("samples", totals.get("samples")),
        ("tokens", totals.get("tokens")),
        *_layouts(progress.get("launches") or [], progress["step"]),
        ("training time (sum of step times)", None if seconds is None else f"{seconds:.1f} s"),
    ]
    if held := progress.get("last_validation"):
        where = f"held-out loss at step {held['step']} ({held['val_samples']} samples)"
        rows.append((where, f"{held['val_loss']:.4f}"))
    text = _table(rows, ("what", "value"))
    last = progress.get("last_row")
    if last:
        losses = [(k, f"{last[k]:.4f}") for k in LOSS_KEYS if isinstance(last.get(k), float)]
        text += f"\n\nLosses at step {last['step']} (the last logged):\n\n"
        text += _table(losses, ("loss", "nats"))
    return text


def _layouts(launches: list[dict[str, Any]], last_step: int) -> list[tuple[str, Any]]:
    """The hardware and engine rows: one value, or each launch's steps when a resumed run
    changed them (2 ranks under ZeRO-2, then one process)."""
    if len({_layout(x) for x in launches}) <= 1:
        last = launches[-1] if launches else {}
        return [("hardware", last.get("hardware")), ("engine", last.get("engine"))]
    runs = [x for i, x in enumerate(launches) if i == 0 or _layout(x) != _layout(launches[i - 1])]
    ends = [x["first_step"] - 1 for x in runs[1:]] + [last_step]
    spans = [f"steps {x['first_step']}-{end}" for x, end in zip(runs, ends, strict=True)]
    return [
        (key, "; ".join(f"{s}: {x[key]}" for s, x in zip(spans, runs, strict=True)))
        for key in ("hardware", "engine")
    ]


def _layout(launch: dict[str, Any]) -> tuple[str, str]:
    return launch["hardware"], launch["engine"]


def _results(index: list[dict[str, Any]]) -> str:
    rows = []
    for entry in index:
        for result in entry.get("results", []):
            for metric in result["metrics"]:
                rows.append((result["dataset"]["name"], f"{metric['name']}: {metric['value']}"))
    if not rows:
        return "Not evaluated yet: `reflectioncoder evaluate --task humaneval --model THIS_FOLDER`."
    return _table(rows, ("benchmark", "score (%)"))


def render(meta: dict[str, Any], sections: dict[str, str], title: str) -> str:
    """The card's text: YAML metadata, the title, then one ``## `` section each."""
    body = "\n\n".join(f"## {name}\n\n{text}" for name, text in sections.items())
    head = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{head}---\n\n# {title}\n\n{body}\n"


def parse(text: str) -> tuple[dict[str, Any], str, dict[str, str]]:
    """(metadata, title, sections) of a card written by ``render``."""
    if not text.startswith("---\n"):
        return {}, "", {}
    head, _, body = text[4:].partition("\n---\n")
    meta = yaml.safe_load(head) or {}
    title = ""
    sections: dict[str, str] = {}
    name = None
    for line in body.splitlines():
        if line.startswith("# ") and not title:
            title = line[2:].strip()
        elif line.startswith("## "):
            name = line[3:].strip()
            sections[name] = ""
        elif name is not None:
            sections[name] += line + "\n"
    return meta, title, {k: v.strip() for k, v in sections.items()}


def _provenance(folder: Path) -> dict[str, Any]:
    """What a local base-model folder records of where its weights came from: install-model's
    ORIGIN.json, else convert-gguf's record ({} when neither is there or readable)."""
    from reflectioncoder.convert import SOURCE_FILE

    for name in ("ORIGIN.json", SOURCE_FILE):
        try:
            record = json.loads((folder / name).read_text())
        except (OSError, ValueError):  # absent or damaged: the card says less, the run goes on
            continue
        if isinstance(record, dict):
            return record if name == "ORIGIN.json" else {"gguf": record}
    return {}


def _base_model(base: str) -> tuple[str | None, str]:
    """(the Hub id for ``base_model``, the card's base-model text). A local folder is not a
    Hub id: its id is written only where the folder records one (install-model)."""
    folder = Path(base)
    if not folder.is_dir():
        return base, f"`{base}`"
    record = _provenance(folder)
    model = str(record.get("model", ""))
    hub_id = model.split()[0] if "/" in model.split(" ", 1)[0] else None
    text = f"`{base}` (a local folder)"
    if model:
        text += f": {model}"
    if record.get("package"):
        text += f", installed by `reflectioncoder install-model` from `{record['package']}`"
    gguf = record.get("gguf")
    if isinstance(gguf, dict) and gguf.get("file"):
        text += (
            f". Its weights were dequantised to float32 from the GGUF file `{gguf['file']}` "
            f"({gguf.get('file_type', 'quantisation not recorded')}, sha256 "
            f"{gguf.get('sha256', 'not recorded')}): this fine-tune starts from the quantised "
            "model, not the original weights"
        )
    return hub_id, text + "."


def run_card(
    cfg: RunConfig,
    counts: dict[str, int],
    progress: dict[str, Any],
    manifests: dict[str, dict[str, Any]] | None = None,
) -> str:
    """The card of a run at ``progress["step"]`` (a checkpoint, or the end); ``manifests``
    from ``read_manifests`` (read at start-up: the data the run loaded)."""
    if manifests is None:
        manifests = read_manifests(cfg.data.files)
    base = cfg.model.name_or_path
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation"}
    if base is None:
        arch = ", ".join(f"{k} {v}" for k, v in cfg.model.arch.items())
        base_text = f"None: a Llama built from scratch ({arch})."
    else:
        hub_id, base_text = _base_model(base)
        if hub_id is not None:
            meta["base_model"] = hub_id
    meta["tags"] = [TAG, "code", "reflection"]
    sections = {
        "Base model": base_text,
        "Training procedure": (
            f"Fine-tuned with the ReflectionCoder method by reflectioncoder {__version__}: a "
            "teacher pass over each whole reflection sequence, a student pass that sees it "
            "dynamically masked, cross-entropy on both and KL(teacher || student) on the "
            "answer.\n\n" + _method(cfg)
        ),
        "Training data": _data(cfg, counts, manifests),
        "Training results": _training(progress),
        "Evaluation results": _results([]),
    }
    return render(meta, sections, Path(cfg.checkpoint.out_dir).resolve().name)


def add_eval_results(
    folder: str | Path, scores: dict[str, dict[str, float]], note: str = ""
) -> Path | None:
    """Add ``evaluate``'s scores to the folder's card as ``model-index`` entries (a benchmark
    and metric scored again replaces its entry) and rewrite its results section. Cards that
    reflectioncoder did not write are left alone (None)."""
    path = Path(folder) / README
    if not path.is_file():
        return None
    with _locked(path) as card:  # two evaluations of one model at once: both entries kept
        try:
            meta, title, sections = parse(card.read().decode("utf-8"))
            if not isinstance(meta, dict) or TAG not in (meta.get("tags") or []):
                return None
            _add_results(meta, title, scores, note)
            sections["Evaluation results"] = _results(meta["model-index"])
        except UnicodeDecodeError as err:
            raise UserError(f"not UTF-8 (byte {err.start + 1}); not updated", file=path) from None
        except yaml.YAMLError as err:  # edited by hand since
            mark = getattr(err, "problem_mark", None)
            line = None if mark is None else mark.line + 2  # the metadata starts on line 2
            raise UserError(
                "its YAML metadata does not parse; not updated", file=path, line=line
            ) from None
        except (KeyError, TypeError, AttributeError, IndexError) as err:
            raise UserError(
                f"its model-index is not as reflectioncoder writes it ({type(err).__name__}: "
                f"{err}); not updated",
                file=path,
            ) from None
        atomic_write_text(path, render(meta, sections, title))  # a kill leaves it whole
    return path


def _add_results(meta: dict, title: str, scores: dict[str, dict[str, float]], note: str) -> None:
    """``scores`` into ``meta``'s model-index (a benchmark and metric scored again: replaced)."""
    index = meta.setdefault("model-index", [{"name": title, "results": []}])
    results = index[0].setdefault("results", [])
    for bench, values in scores.items():
        result = next((r for r in results if r["dataset"]["name"] == bench), None)
        if result is None:
            dataset = _dataset(bench)
            result = {"task": {"type": "text-generation"}, "dataset": dataset, "metrics": []}
            results.append(result)
        for metric, value in values.items():
            name = f"{metric}{note}"
            result["metrics"] = [m for m in result["metrics"] if m["name"] != name]
            entry = {"type": metric, "value": round(100 * value, 2), "name": name}
            result["metrics"].append(dict(entry, verified=False))


def _dataset(bench: str) -> dict[str, str]:
    """The model-index ``dataset`` of a score-table row: its Hub id as ``type`` (MultiPL-E's
    ``multiple-LANG``: nuprl/MultiPL-E, config humaneval-LANG)."""
    if bench.startswith("multiple-"):
        config = f"humaneval-{bench.removeprefix('multiple-')}"
        return {"name": bench, "type": "nuprl/MultiPL-E", "config": config}
    return {"name": bench, "type": DATASETS.get(bench, bench)}


@contextmanager
def _locked(path: Path) -> Iterator[BinaryIO]:
    """``path`` open for reading under an exclusive lock, held until the block ends; taken on
    the file now at ``path`` (a writer before us may have replaced the one we opened)."""
    while True:
        card = path.open("rb")
        fcntl.flock(card, fcntl.LOCK_EX)
        if os.fstat(card.fileno()).st_ino == os.stat(path).st_ino:
            break
        card.close()
    try:
        yield card
    finally:
        card.close()
