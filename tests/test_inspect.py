"""`reflectioncoder inspect`: its JSON against the SPEC references, and its text view."""

from __future__ import annotations

import json
import random

import pytest
from reference.mask import rate_ref, visible_drawn
from reference.serialise import (
    IGNORE,
    SPECIALS,
    ids_ref,
    student_labels_ref,
    teacher_labels_ref,
)
from test_data_loading import CORPUS, random_sample
from transformers import AutoTokenizer

from reflectioncoder.cli import main as cli_main
from reflectioncoder.data.masking import sample_rng
from reflectioncoder.data.tokenize import add_special_tokens
from reflectioncoder.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(CORPUS, vocab_size=350, out_dir=out)
    return str(out)


@pytest.mark.parametrize(
    "strategies,order", [([], "tce"), (["random_token_mask", "sequential_block_mask"], "etc")]
)
def test_inspect_json_matches_reference(strategies, order, tok_dir, tmp_path, seed, capsys):
    rng = random.Random(seed)
    raw = [random_sample(rng) for _ in range(12)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in raw))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    add_special_tokens(tok)
    sp = {s: tok.convert_tokens_to_ids(s) for s in SPECIALS}
    lengths = sorted(len(ids_ref(s, tok)) for s in raw)
    max_len = lengths[-1] - 1  # leaves out at least the longest
    out = tmp_path / "v.json"
    step, total = rng.randrange(10), 10  # steps 0-9 of a 10-step run (a later one is refused)
    argv = ["inspect", "--data", str(data), "--tokenizer", tok_dir, "--step", str(step)]
    argv += ["--total-steps", str(total), "--seed", str(seed), "--max-len", str(max_len)]
    argv += ["--block-order", order, "--json", str(out)]
    for s in strategies:
        argv += ["--strategy", s]
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    views = json.loads(out.read_text())
    # uid: the index among all valid samples, over-length ones counted (as the trainer does).
    kept = [(uid, s) for uid, s in enumerate(raw) if len(ids_ref(s, tok)) <= max_len]
    assert len(views) == len(kept) and len(kept) < len(raw)
    assert f"{len(raw) - len(kept)} over-length > max_len {max_len} dropped" in text
    strategies = strategies or ["block_mask"]
    for (uid, obj), view in zip(kept, views, strict=True):
        ids = ids_ref(obj, tok)
        assert view["input_ids"] == ids
        assert view["labels"] == teacher_labels_ref(ids, sp)
        if obj["type"] == "generation":
            assert view["student_positions"] == view["student_labels"] == []
            assert view["kl_positions"] == []
            continue
        rate = rate_ref(step, total)
        vis = visible_drawn(ids, sp, strategies, order, rate, sample_rng(seed, step, uid))
        pos = [p for p in range(len(ids)) if vis[p]]
        student = student_labels_ref(ids, sp)
        assert view["student_positions"] == pos
        assert view["student_labels"] == [student[p] for p in pos]
        assert view["kl_positions"] == [p for p in range(len(ids)) if student[p] != IGNORE]
    assert "-- teacher:" in text and "-- student (" in text and "[[<|assistant|>" in text


def test_inspect_text_view_and_tokenizer_as_given(tmp_path, capsys):
    tok = train_tokenizer(CORPUS, vocab_size=320)
    add_special_tokens(tok)
    tok.save_pretrained(str(tmp_path / "tok"))
    obj = {
        "type": "reflection",
        "messages": [
            {"role": "user", "content": [{"type": "text", "content": "Q"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "code", "content": "x"},
                    {"type": "execution", "content": "E"},
                ],
            },
            {"role": "user", "content": [{"type": "text", "content": "Q"}]},
            {"role": "assistant", "content": [{"type": "text", "content": "A"}]},
        ],
    }
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps(obj) + "\n")
    argv = ["inspect", "--data", str(data), "--tokenizer", str(tmp_path / "tok")]
    assert cli_main(argv + ["--strategy", "all_mask", "--json", str(tmp_path / "o.json")]) == 0
    text = capsys.readouterr().out
    # all_mask hides [0, end]: <s><|user|><|text|>Q<|endofblock|><|endofmessage|><|assistant|>
    # + the body (<|code|>x<|endofblock|><|execution|>E<|endofblock|>) + <|endofmessage|>.
    assert "<~14 hidden~><|user|><|text|>Q<|endofblock|><|endofmessage|>[[<|assistant|>" in text
    assert "<|endofmessage|>]]</s>" in text  # the final EOS carries no student label
    view = json.loads((tmp_path / "o.json").read_text())[0]
    assert max(view["input_ids"]) < len(tok)  # the saved vocabulary, used as given


def test_inspect_bad_arguments(tmp_path, tok_dir, capsys):
    with pytest.raises(SystemExit) as err:
        cli_main(["inspect", "--data", "x.jsonl", "--tokenizer", tok_dir, "--strategy", "nope"])
    assert err.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    argv = ["inspect", "--data", "x.jsonl", "--tokenizer", tok_dir, "--block-order", "tc"]
    assert cli_main(argv) == 2
    assert "--block-order: must be a permutation of t, c, e" in capsys.readouterr().err


def test_inspect_bad_sample_message(tmp_path, tok_dir, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"type": "generation", "messages": [{"role": "bot", "content": []}]}\n')
    assert cli_main(["inspect", "--data", str(data), "--tokenizer", tok_dir]) == 1
    err = capsys.readouterr().err
    assert f"{data}:1:messages[0].role: unknown role 'bot' (user | assistant)" in err


def test_inspect_prints_escape_codes_escaped(tmp_path, tok_dir, capsys):
    """A sample's text and a skipped row's file name are the data's: their escape codes are
    shown escaped (the view keeps its lines), never sent to the terminal."""
    code = "print('\x1b]0;pwned\x07')\nx = 1"
    sample = {
        "type": "generation",
        "messages": [
            {"role": "user", "content": [{"type": "text", "content": "Clear the screen."}]},
            {"role": "assistant", "content": [{"type": "code", "content": code}]},
        ],
    }
    data = tmp_path / "evil\x1b[2J.jsonl"
    data.write_text(json.dumps(sample) + "\n{oops\n")
    assert cli_main(["inspect", "--data", str(data), "--tokenizer", tok_dir, "--skip-bad"]) == 0
    text = capsys.readouterr().out
    assert "\x1b" not in text and "\x07" not in text
    assert "evil\\x1b[2J.jsonl:2:<json>: invalid JSON" in text
    assert "print('\\x1b]0;pwned\\x07')\nx = 1" in text


def test_inspect_bad_sample_message_escaped(tmp_path, tok_dir, capsys):
    data = tmp_path / "evil\x1b[2J.jsonl"
    data.write_text("{oops\n")
    assert cli_main(["inspect", "--data", str(data), "--tokenizer", tok_dir]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "evil\\x1b[2J.jsonl:1:<json>: invalid JSON" in err
