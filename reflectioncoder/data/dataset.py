"""From jsonl files to TokenizedSamples: validation, tokenisation (multi-process), disk cache.

The cache holds one file per (tokenizer, file bytes, max_len, skip_bad): a second run loads
the ids from it and does not tokenise again; changing any of those changes the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from reflectioncoder.data.config import DataConfig
from reflectioncoder.data.schema import LoadReport, load_jsonl
from reflectioncoder.data.tokenize import (
    TokenizedSample,
    build_sample,
    encode_text,
    serialise,
    special_token_ids,
)
from reflectioncoder.printable import printable
from reflectioncoder.progress import Progress

log = logging.getLogger("reflectioncoder.data")

CACHE_VERSION = 2  # bump when serialisation or labelling changes
_CHUNK = 256  # samples per worker task


@dataclass
class DataReport:
    """What loading and tokenising saw. Nothing is dropped without being listed here."""

    loaded: int = 0  # valid samples read (before upsampling)
    skipped: list[str] = field(default_factory=list)  # bad samples: "file:line:field: reason"
    over_length: list[str] = field(default_factory=list)  # "file:line (n ids)"
    samples: int = 0  # samples kept, after upsampling
    cache_hits: int = 0  # files loaded from the cache
    cache_misses: int = 0  # files tokenised

    def summary(self, max_len: int | None = None) -> str:
        text = f"{self.samples} samples ({self.loaded} read"
        if self.skipped:
            text += f", {len(self.skipped)} bad skipped: " + "; ".join(self.skipped[:3])
            text += " ..." if len(self.skipped) > 3 else ""
        if self.over_length:
            limit = f" > max_len {max_len}" if max_len is not None else ""
            longest = self.longest_dropped()
            up_to = f" (up to {longest} ids)" if longest else ""
            text += f", {len(self.over_length)} over-length{limit} dropped{up_to}: "
            text += ", ".join(self.over_length[:3]) + (" ..." if len(self.over_length) > 3 else "")
        return text + ")"

    def longest_dropped(self) -> int | None:
        """The ids of the longest over-length sample: a max_len of it keeps them all; None when
        a huge text was dropped untokenised (its ids never counted) or none was dropped."""
        lengths = [re.search(r"\((\d+) ids\)$", o) for o in self.over_length]
        if not lengths or not all(lengths):
            return None
        return max(int(m.group(1)) for m in lengths if m)

    def why_none_kept(self, max_len: int) -> str:
        """Why no sample was kept, and what to change: ``data.files: no training samples``
        alone sent the user to look for a missing file."""
        why = []
        if self.over_length:
            longest = self.longest_dropped()
            up_to = f" (up to {longest} ids)" if longest else ""
            why.append(f"{len(self.over_length)} longer than data.max_len {max_len}{up_to}: "
                       "raise data.max_len")  # fmt: skip
        if self.skipped:
            why.append(f"{len(self.skipped)} bad skipped (data.skip_bad), e.g. {self.skipped[0]}")
        return "no training samples: " + "; ".join(why) if why else "no training samples"


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides the ids: the tokenizer's full JSON and its bos/eos."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:  # slow tokenizers: the vocabulary and class stand in for the model
        body = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())])
    extra = json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id])
    return hashlib.sha256((body + extra).encode()).hexdigest()


def file_fingerprint(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(tok_fp: str, file_fp: str, max_len: int, skip_bad: bool) -> str:
    payload = json.dumps([CACHE_VERSION, tok_fp, file_fp, max_len, skip_bad])
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


_WORKER_TOKENIZER = None


def _init_worker(tokenizer) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process
    _WORKER_TOKENIZER = tokenizer


def _encode_chunk(texts: list[str]) -> list[list[int]]:
    return [encode_text(_WORKER_TOKENIZER, t) for t in texts]


def encode_texts(tokenizer, texts: list[str], num_workers: int = 1, desc: str = "") -> list:
    """[BOS] + ids + [EOS] of each text (one tokenizer call per text), with a progress bar;
    ``num_workers > 1`` spreads chunks over processes."""
    chunks = [texts[i : i + _CHUNK] for i in range(0, len(texts), _CHUNK)]
    # One plain line per file when the output is not a terminal.
    bar = Progress(len(texts), f"tokenise {desc}".strip(), unit="sample", every=len(texts))
    out: list[list[int]] = []
    try:
        if num_workers <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                out.extend(encode_text(tokenizer, t) for t in chunk)
                bar.update(len(chunk))
        else:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with ProcessPoolExecutor(
                max_workers=num_workers,
                mp_context=multiprocessing.get_context(method),
                initializer=_init_worker,
                initargs=(tokenizer,),
            ) as pool:
                for ids in pool.map(_encode_chunk, chunks):  # in order
                    out.extend(ids)
                    bar.update(len(ids))
    finally:
        bar.close()
    return out


def surely_over_length_bytes(tokenizer, max_len: int) -> int:
    """A text of more UTF-8 bytes than this has more than ``max_len`` ids whatever it holds: no
    id covers more bytes than the vocabulary's longest entry spells (a byte-level 'Ġ' or
    SentencePiece's '▁' spells more than it covers), doubled for what a normaliser folds."""
    longest = max((len(str(entry).encode()) for entry in tokenizer.get_vocab()), default=1)
    return 2 * max(longest, 1) * max_len


def _tokenise_file(path: str, tokenizer, cfg: DataConfig) -> dict:
    report = LoadReport()
    samples = load_jsonl(path, skip_bad=cfg.skip_bad, report=report)
    texts = [serialise(s) for s in samples]
    # a huge line (a pasted log, a data blob) is dropped unread: tokenising 10 MB took minutes
    bound = surely_over_length_bytes(tokenizer, cfg.max_len)
    sizes = [len(t.encode()) if len(t) * 4 > bound else 0 for t in texts]
    huge = {i for i, n in enumerate(sizes) if n > bound}
    short = [t for i, t in enumerate(texts) if i not in huge]
    encoded = iter(encode_texts(tokenizer, short, cfg.num_workers, desc=Path(path).name))
    ids = [None if i in huge else next(encoded) for i in range(len(texts))]
    keep = [i for i, x in enumerate(ids) if x is not None and len(x) <= cfg.max_len]
    lens = [len(ids[i]) for i in keep]
    flat = [t for i in keep for t in ids[i]]
    return {
        "ids": torch.tensor(flat, dtype=torch.int64),
        "lengths": torch.tensor(lens, dtype=torch.int64),
        "is_reflection": [samples[i].is_reflection for i in keep],
        "sources": [samples[i].source for i in keep],
        "index": keep,  # position among the file's valid samples (for uids)
        "loaded": len(samples),
        "skipped": list(report.skipped),
        "over_length": [
            f"{samples[i].source} ({sizes[i]} bytes of text: over {cfg.max_len} ids, not tokenised)"
            if x is None
            else f"{samples[i].source} ({len(x)} ids)"
            for i, x in enumerate(ids)
            if x is None or len(x) > cfg.max_len
        ],
    }


def load_dataset(
    cfg: DataConfig, tokenizer, warn: bool = True
) -> tuple[list[TokenizedSample], DataReport]:
    """Load, validate and tokenise ``cfg.files`` (upsampled), cached under ``cfg.cache_dir``.
    ``warn``: log the samples skipped or dropped (one rank of several: False, as rank 0 does).

    Raises DataError (file:line:field) on the first bad sample unless ``cfg.skip_bad``.
    Each returned sample has a distinct ``uid``: its index among the valid samples of the
    upsampled file list (over-length ones counted), as the trainer numbers them.
    """
    if not cfg.files:
        raise ValueError("files: no data files given")
    special = special_token_ids(tokenizer)
    tok_fp = tokenizer_fingerprint(tokenizer)
    upsample = cfg.upsample or [1] * len(cfg.files)
    report = DataReport()
    out: list[TokenizedSample] = []
    next_uid = 0
    for path, factor in zip(cfg.files, upsample, strict=True):
        if not Path(path).is_file():
            raise FileNotFoundError(f"files: data file not found: {path}")
        cached = None
        cache_file = None
        if cfg.cache_dir is not None:
            key = cache_key(tok_fp, file_fingerprint(path), cfg.max_len, cfg.skip_bad)
            cache_file = Path(cfg.cache_dir) / f"{Path(path).stem}-{key}.pt"
            if cache_file.is_file():
                cached = torch.load(cache_file, weights_only=True)
                report.cache_hits += 1
        if cached is None:
            cached = _tokenise_file(path, tokenizer, cfg)
            report.cache_misses += 1
            if cache_file is not None:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
                torch.save(cached, tmp)
                os.replace(tmp, cache_file)  # atomic: concurrent ranks never read half a file
        report.loaded += cached["loaded"]
        report.skipped += cached["skipped"]
        report.over_length += cached["over_length"]
        pieces = torch.split(cached["ids"], cached["lengths"].tolist())
        file_samples = [
            build_sample(ids.numpy(), special, refl, src)
            for ids, refl, src in zip(
                pieces, cached["is_reflection"], cached["sources"], strict=True
            )
        ]
        for _ in range(factor):
            # uid: index among all valid samples (upsampled copies and over-length ones
            # counted), so max_len does not change which mask a sample draws.
            out += [
                dataclasses.replace(s, uid=next_uid + j)
                for j, s in zip(cached["index"], file_samples, strict=True)
            ]
            next_uid += cached["loaded"]
    report.samples = len(out)
    if warn and (report.skipped or report.over_length):  # never dropped silently
        log.warning("data: %s", printable(report.summary(cfg.max_len)))  # quotes rows
    return out, report
