"""Loading, validation, serialisation, labels and the cache (SPEC §1-2)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from reference.serialise import (
    IGNORE,
    SPECIALS,
    ids_ref,
    student_labels_ref,
    teacher_labels_ref,
)

from reflectioncoder.data import dataset as dataset_mod
from reflectioncoder.data.config import DataConfig
from reflectioncoder.data.dataset import load_dataset
from reflectioncoder.data.schema import DataError, load_files
from reflectioncoder.data.tokenize import (
    SPECIAL_TOKENS,
    add_special_tokens,
    special_token_ids,
)
from reflectioncoder.tokenizer import train_tokenizer

ALPHABET = list("abcdefghij xyz_()=:+-\n\t{}[]<>|'\"#.,0123456789") + ["é", "日本", "<|", "|>"]
CORPUS = [
    "def f(x):\n    return x + 1\n",
    "Traceback (most recent call last):\n  File <stdin>, line 1\nNameError",
    "The bug is an off-by-one error in the loop.",
] * 30


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_tokenizer(CORPUS + ["".join(ALPHABET)] * 5, vocab_size=400)
    add_special_tokens(tok)
    return tok


def _text(rng: random.Random, lo: int = 0, hi: int = 30) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(lo, hi)))


def _blocks(rng, n_lo, n_hi, types=("text", "code", "execution")):
    return [
        {"type": rng.choice(types), "content": _text(rng)} for _ in range(rng.randint(n_lo, n_hi))
    ]


def random_sample(rng: random.Random) -> dict:
    instr = [{"type": "text", "content": _text(rng, 1)}]
    if rng.random() < 0.3:
        return {
            "type": "generation",
            "messages": [
                {"role": "user", "content": instr},
                {"role": "assistant", "content": _blocks(rng, 1, 3)},
            ],
        }
    return {
        "type": rng.choice(["reflection", "ReflectionSeq-GPT"]),
        "messages": [
            {"role": "user", "content": instr},
            {"role": "assistant", "content": _blocks(rng, 0, 6)},
            {"role": "user", "content": instr},
            {"role": "assistant", "content": _blocks(rng, 1, 3)},
        ],
    }


def _write(path, samples) -> str:
    path.write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    return str(path)


def test_add_special_tokens_records_original_split(seed):
    tok = train_tokenizer(CORPUS, vocab_size=300)
    before = {s: tok.encode(s, add_special_tokens=False) for s in SPECIAL_TOKENS}
    n = len(tok)
    splits = add_special_tokens(tok)
    assert splits == before and all(len(v) > 1 for v in splits.values())
    assert len(tok) == n + 7
    ids = special_token_ids(tok)
    assert tok.encode("<|user|><|code|>", add_special_tokens=False) == [
        ids["<|user|>"],
        ids["<|code|>"],
    ]
    again = add_special_tokens(tok)  # idempotent: used as given
    assert len(tok) == n + 7 and again == {s: [ids[s]] for s in SPECIAL_TOKENS}
    with pytest.raises(ValueError, match="tokenizer: lacks special tokens"):
        special_token_ids(train_tokenizer(CORPUS, vocab_size=300))


def test_serialisation_and_labels_match_reference(tokenizer, seed, tmp_path):
    rng = random.Random(seed)
    raw = [random_sample(rng) for _ in range(40)]
    path = _write(tmp_path / "a.jsonl", raw)
    loaded, report = load_dataset(DataConfig(files=[str(path)], max_len=100_000), tokenizer)
    assert report.loaded == 40 and not report.skipped and len(loaded) == 40
    sp = {s: tokenizer.convert_tokens_to_ids(s) for s in SPECIALS}
    for obj, t in zip(raw, loaded, strict=True):
        ids = ids_ref(obj, tokenizer)
        assert t.ids.tolist() == ids
        assert t.labels.tolist() == teacher_labels_ref(ids, sp)
        refl = obj["type"] != "generation"
        assert t.is_reflection == refl
        if refl:
            assert t.student_labels.tolist() == student_labels_ref(ids, sp)
            assert t.student_labels[-1] == IGNORE  # the final EOS (quirk)
            assert ids[t.body_start - 1] == sp["<|assistant|>"]
            assert ids[t.body_end] == sp["<|endofmessage|>"]
            assert len(t.blocks) == len(obj["messages"][1]["content"])
            assert [b[2] for b in t.blocks] == [b["type"] for b in obj["messages"][1]["content"]]
            for lo, hi, _ in t.blocks:
                assert ids[lo] in sp.values() and ids[hi - 1] == sp["<|endofblock|>"]
        else:
            assert (t.student_labels == IGNORE).all()


def test_teacher_label_span_without_closing_token():
    sp = {s: 100 + i for i, s in enumerate(SPECIALS)}
    from reflectioncoder.data.tokenize import build_sample

    ids = [1, sp["<|assistant|>"], sp["<|text|>"], 5, sp["<|execution|>"], 6, 7]
    t = build_sample(ids, sp, False)
    assert t.labels.tolist() == teacher_labels_ref(ids, sp) == [IGNORE, *ids[1:4], *[IGNORE] * 3]


BAD = [
    ("{not json", r"bad\.jsonl:2:<json>: invalid JSON"),
    (
        {"type": "generation", "messages": [{"role": "system", "content": []}]},
        r"bad\.jsonl:2:messages\[0\]\.role: unknown role 'system'",
    ),
    (
        {
            "type": "reflection",
            "messages": [{"role": "user", "content": [{"type": "image", "content": ""}]}],
        },
        r"bad\.jsonl:2:messages\[0\]\.content\[0\]\.type: unknown block type 'image'",
    ),
    (
        {"type": "reflection", "messages": [{"role": "user", "content": []}] * 3},
        r"bad\.jsonl:2:messages: missing final answer",
    ),
    (
        {"type": "generation", "messages": [{"role": "user", "content": []}]},
        r"bad\.jsonl:2:messages: missing final answer",
    ),
    (
        {
            "type": "generation",
            "messages": [
                {"role": "user", "content": [{"type": "text", "content": "hi"}]},
                {"role": "assistant", "content": [{"type": "code", "content": "x<|code|>"}]},
            ],
        },
        r"bad\.jsonl:2:messages\[1\]\.content\[0\]\.content: contains the special-token string "
        r"'<\|code\|>'",
    ),
    (
        {"type": "generation", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
        r"bad\.jsonl:2:messages\[0\]\.content\[0\]\.content: missing",
    ),
]


@pytest.mark.parametrize("bad,message", BAD, ids=[m.split(": ")[-1][:20] for _, m in BAD])
def test_bad_sample_stops_with_file_line_field(bad, message, tmp_path, seed):
    good = random_sample(random.Random(seed))
    path = tmp_path / "bad.jsonl"
    line = bad if isinstance(bad, str) else json.dumps(bad)
    path.write_text(json.dumps(good) + "\n" + line + "\n" + json.dumps(good) + "\n")
    with pytest.raises(DataError, match=message) as err:
        load_files([str(path)])
    print(err.value)  # the message a user sees


def test_skip_bad_reports_lines(tmp_path, seed, tokenizer):
    rng = random.Random(seed)
    lines = [json.dumps(random_sample(rng)) for _ in range(5)]
    lines.insert(1, "{oops")
    lines.insert(4, json.dumps({"type": "reflection", "messages": []}))
    lines.insert(5, "")  # blank lines are ignored
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(files=[str(path)], skip_bad=True)
    samples, report = load_dataset(cfg, tokenizer)
    assert len(samples) == 5 and report.loaded == 5 and len(report.skipped) == 2
    assert report.skipped[0].startswith(f"{path}:2:<json>: invalid JSON")
    assert report.skipped[1].startswith(f"{path}:5:messages: missing final answer")
    assert "2 bad skipped" in report.summary()


def test_skip_bad_warning_escapes_the_file_name(tmp_path, seed, tokenizer, caplog):
    """The warning quotes the file's name and fields: a name holding an escape code is logged
    escaped (reflectioncoder/printable.py), not sent to the terminal."""
    path = tmp_path / "evil\x1b]0;pwned\x07.jsonl"
    path.write_text(json.dumps(random_sample(random.Random(seed))) + "\n{oops\n")
    with caplog.at_level("WARNING", logger=dataset_mod.log.name):
        load_dataset(DataConfig(files=[str(path)], skip_bad=True), tokenizer)
    (warning,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data: ")]
    assert "\x1b" not in warning and "\x07" not in warning
    assert "evil\\x1b]0;pwned\\x07.jsonl:2:<json>: invalid JSON" in warning


def test_empty_content_is_valid(tmp_path, tokenizer):
    obj = {
        "type": "reflection",
        "messages": [
            {"role": "user", "content": [{"type": "text", "content": ""}]},
            {"role": "assistant", "content": [{"type": "execution", "content": ""}]},
            {"role": "user", "content": [{"type": "text", "content": ""}]},
            {"role": "assistant", "content": [{"type": "text", "content": ""}]},
        ],
    }
    samples, _ = load_dataset(DataConfig(files=[_write(tmp_path / "e.jsonl", [obj])]), tokenizer)
    assert len(samples) == 1 and samples[0].blocks[0][1] - samples[0].blocks[0][0] == 2


def test_upsampling_over_length_and_uids(tmp_path, seed, tokenizer):
    rng = random.Random(seed)
    gen = _write(tmp_path / "gen.jsonl", [random_sample(rng) for _ in range(6)])
    refl = _write(tmp_path / "refl.jsonl", [random_sample(rng) for _ in range(4)])
    full, _ = load_dataset(DataConfig(files=[gen, refl], upsample=[1, 2]), tokenizer)
    assert len(full) == 6 + 2 * 4
    assert [s.uid for s in full] == list(range(14))
    assert [s.source for s in full[6:10]] == [s.source for s in full[10:]]
    lengths = sorted(len(s) for s in full[:10])
    max_len = lengths[4]
    cut, report = load_dataset(DataConfig(files=[gen, refl], max_len=max_len), tokenizer)
    n_over = sum(n > max_len for n in lengths)
    assert n_over > 0 and len(report.over_length) == n_over and len(cut) == 10 - n_over
    assert all(len(s) <= max_len for s in cut)
    # uids count the dropped samples too: a sample keeps its uid (and its masks) whatever max_len.
    assert [s.uid for s in cut] == [i for i, s in enumerate(full[:10]) if len(s) <= max_len]
    assert f"{n_over} over-length > max_len {max_len} dropped" in report.summary(max_len)
    with pytest.raises(ValueError, match="upsample: 1 factors for 2 files"):
        DataConfig(files=[gen, refl], upsample=[2])


def test_cache_hits_and_key_changes(tmp_path, seed, tokenizer, monkeypatch):
    rng = random.Random(seed)
    path = tmp_path / "d.jsonl"
    _write(path, [random_sample(rng) for _ in range(8)])
    cfg = DataConfig(files=[str(path)], cache_dir=str(tmp_path / "cache"))
    first, r1 = load_dataset(cfg, tokenizer)
    assert (r1.cache_hits, r1.cache_misses) == (0, 1)

    def no_tokenising(*args, **kwargs):
        raise AssertionError("tokenised again")

    with monkeypatch.context() as m:
        m.setattr(dataset_mod, "encode_texts", no_tokenising)
        second, r2 = load_dataset(cfg, tokenizer)
    assert (r2.cache_hits, r2.cache_misses) == (1, 0)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.ids, b.ids) and torch.equal(a.labels, b.labels)
        assert a.blocks == b.blocks and a.source == b.source
    # The key changes with max_len, the data and the tokenizer.
    _, r3 = load_dataset(
        DataConfig(files=[str(path)], cache_dir=cfg.cache_dir, max_len=99), tokenizer
    )
    assert r3.cache_misses == 1
    with path.open("a") as f:
        f.write(json.dumps(random_sample(rng)) + "\n")
    _, r4 = load_dataset(cfg, tokenizer)
    assert r4.cache_misses == 1
    other = train_tokenizer(CORPUS, vocab_size=290)
    add_special_tokens(other)
    _, r5 = load_dataset(cfg, other)
    assert r5.cache_misses == 1


def test_multiprocess_tokenisation_matches(tmp_path, seed, tokenizer, monkeypatch):
    rng = random.Random(seed)
    path = _write(tmp_path / "m.jsonl", [random_sample(rng) for _ in range(24)])
    monkeypatch.setattr(dataset_mod, "_CHUNK", 5)
    one, _ = load_dataset(DataConfig(files=[path]), tokenizer)
    two, _ = load_dataset(DataConfig(files=[path], num_workers=2), tokenizer)
    assert [s.ids.tolist() for s in one] == [s.ids.tolist() for s in two]


def test_missing_file_and_empty_config(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_dataset(DataConfig(files=[str(tmp_path / "nope.jsonl")]), tokenizer)
    with pytest.raises(ValueError, match="files: no data files given"):
        load_dataset(DataConfig(), tokenizer)
    with pytest.raises(ValueError, match="max_len: must be an int >= 2"):
        DataConfig(files=["x"], max_len=1)
