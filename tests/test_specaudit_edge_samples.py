"""SPEC §1-3 end to end on the samples a user's data holds at its edges: multi-turn reflection
and generation samples, an empty reflection, empty execution feedback, execution blocks in the
final answer, a reflection far longer than the rest, non-ASCII text, a sample of exactly max_len
ids. From the raw JSON line to the packed step loss, every stage is compared with the plain
references of tests/reference (serialisation and labels per token, the mask per token, the step
loss per sample with a toy causal model), never with the code's own output."""

from __future__ import annotations

import json
import random

import pytest
import torch
from reference.mask import body_ref, rate_ref, visible_drawn
from reference.packing import ToyCausalModel, packed_loss, sample_terms, step_loss_ref
from reference.serialise import SPECIALS, ids_ref, student_labels_ref, teacher_labels_ref

from reflectioncoder.data.config import STRATEGIES, DataConfig, MaskConfig, PackingConfig
from reflectioncoder.data.dataset import load_dataset
from reflectioncoder.data.masking import sample_rng
from reflectioncoder.data.packing import pack_rank, plan_step
from reflectioncoder.data.tokenize import add_special_tokens
from reflectioncoder.tokenizer import train_tokenizer

CORPUS = [
    "def f(x):\n    return x + 1\n",
    "Traceback (most recent call last):\n  NameError: name 'y' is not defined",
    "Le résultat est faux: 日本語のテキスト, λ x: x ✓",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_tokenizer(CORPUS, vocab_size=320)
    add_special_tokens(tok)
    return tok


def _msg(role: str, *blocks: tuple[str, str]) -> dict:
    return {"role": role, "content": [{"type": t, "content": c} for t, c in blocks]}


def edge_samples() -> dict[str, dict]:
    ask = _msg("user", ("text", "Write f(x) qui renvoie x + 1 — 日本"))
    answer = _msg("assistant", ("text", "```python\ndef f(x):\n    return x + 1\n```"))
    code = ("code", "def f(x):\n    return x + 2\nprint(f(1))")
    return {
        "four messages": {
            "type": "reflection",
            "messages": [
                ask,
                _msg("assistant", ("text", "Essai."), code, ("execution", "3"), ("text", "+1")),
                ask,
                answer,
            ],
        },
        "no reflection": {"type": "reflection", "messages": [ask, _msg("assistant"), ask, answer]},
        "empty feedback": {
            "type": "reflection",
            "messages": [ask, _msg("assistant", code, ("execution", "")), ask, answer],
        },
        "executions in the answer": {
            "type": "ReflectionSeq-DS",
            "messages": [
                ask,
                _msg("assistant", code, ("execution", "λ ✓")),
                ask,
                _msg("assistant", ("code", "print(1)"), ("execution", "1"), ("text", "done")),
            ],
        },
        "long reflection": {
            "type": "reflection",
            "messages": [
                ask,
                _msg("assistant", *[code, ("execution", "Traceback NameError " * 5)] * 12),
                ask,
                answer,
            ],
        },
        "multi-turn reflection": {
            "type": "reflection",
            "messages": [
                ask,
                _msg("assistant", code, ("execution", "3")),
                _msg("user", ("text", "Encore une fois.")),
                _msg("assistant", ("text", "Je corrige."), ("code", "def f(x): return x+1")),
                ask,
                answer,
            ],
        },
        "multi-turn generation": {
            "type": "generation",
            "messages": [ask, _msg("assistant", ("text", "Quoi?")), ask, answer],
        },
    }


def _write(path, objs) -> str:
    path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs), "utf-8")
    return str(path)


@pytest.fixture(scope="module")
def loaded(tokenizer, tmp_path_factory):
    objs = list(edge_samples().values())
    path = _write(tmp_path_factory.mktemp("edge") / "edge.jsonl", objs)
    samples, report = load_dataset(DataConfig(files=[path], max_len=100_000), tokenizer)
    assert not report.skipped and not report.over_length
    return objs, samples


def test_each_edge_sample_tokenises_and_labels_as_the_reference(tokenizer, loaded):
    sp = {s: tokenizer.convert_tokens_to_ids(s) for s in SPECIALS}
    for (name, obj), t in zip(edge_samples().items(), loaded[1], strict=True):
        ids = ids_ref(obj, tokenizer)
        assert t.ids.tolist() == ids, name
        assert t.labels.tolist() == teacher_labels_ref(ids, sp), name
        assert t.is_reflection == (obj["type"] != "generation"), name
        if t.is_reflection:
            assert t.student_labels.tolist() == student_labels_ref(ids, sp), name
            assert (t.body_start, t.body_end) == body_ref(ids, sp), name
            assert len(t.blocks) == len(obj["messages"][1]["content"]), name
        else:
            assert (t.student_labels == -100).all(), name


def test_edge_answer_keeps_its_execution_labels_for_the_student_only(tokenizer, loaded):
    """SPEC §2: execution blocks inside the final answer keep their student labels although
    the teacher ignores them."""
    t = dict(zip(edge_samples(), loaded[1], strict=True))["executions in the answer"]
    exe = tokenizer.convert_tokens_to_ids("<|execution|>")
    p = max(i for i, x in enumerate(t.ids.tolist()) if x == exe)
    assert p > t.answer_start
    assert t.labels[p] == -100 and t.student_labels[p] == exe


@pytest.mark.parametrize("normalisation", ["sample", "token"])
@pytest.mark.parametrize("strategies", [("block_mask",), STRATEGIES, ()], ids=["bm", "all", "none"])
def test_edge_step_loss_matches_the_reference(tokenizer, loaded, strategies, normalisation, seed):
    """Each step of the schedule's ends (first, middle, last, past the end) packs the edge
    samples into micro-batches whose loss sums to SPEC §2's per-sample step loss."""
    sp = {s: tokenizer.convert_tokens_to_ids(s) for s in SPECIALS}
    _, samples = loaded
    cfg = MaskConfig(strategies=strategies, block_order=random.Random(seed).choice(["tce", "etc"]))
    pack = PackingConfig(max_tokens=300, normalisation=normalisation)
    model = ToyCausalModel(len(tokenizer), 8, 2048, seed)
    for step, total in [(0, 0), (0, 4), (1, 4), (3, 4), (7, 4)]:
        plan = plan_step(samples, step, total, cfg, pack, seed)
        got = sum(packed_loss(model, b) for b in pack_rank(plan, 0, cfg, pack))
        terms = []
        for s in samples:
            visible = None
            if s.is_reflection:
                rng = sample_rng(seed, step, s.uid)
                visible = visible_drawn(
                    s.ids.tolist(), sp, cfg.strategies, cfg.block_order, rate_ref(step, total), rng
                )
            terms.append(
                sample_terms(model, s.ids, s.labels, s.student_labels, visible, True, True)
            )
        want = step_loss_ref(terms, normalisation)
        torch.testing.assert_close(got, want, rtol=2e-6, atol=0)


def test_a_sample_of_exactly_max_len_ids_is_kept_one_more_is_dropped(tokenizer, tmp_path):
    """SPEC §1: a sample is dropped when its ids are LONGER than max_len."""
    obj = edge_samples()["four messages"]
    n = len(ids_ref(obj, tokenizer))
    path = _write(tmp_path / "one.jsonl", [obj])
    kept, report = load_dataset(DataConfig(files=[path], max_len=n), tokenizer)
    assert len(kept) == 1 and len(kept[0]) == n and not report.over_length
    dropped, report = load_dataset(DataConfig(files=[path], max_len=n - 1), tokenizer)
    assert dropped == [] and len(report.over_length) == 1


@pytest.mark.parametrize("tied", [False, True])
def test_special_rows_mean_initialised_inside_a_padded_vocabulary(seed, tied):
    """SPEC §1's mean initialisation also where the checkpoint pads its vocabulary (DeepSeek's
    32256 rows): the new ids fall inside the existing rows, nothing grows, and each of the
    seven rows (input and output) still becomes the mean of its original split's rows."""
    from reflectioncoder.model import add_special_token_embeddings, build_tiny_llama, lm_head_weight

    tok = train_tokenizer(CORPUS, vocab_size=300)
    splits = {s: tok.encode(s, add_special_tokens=False) for s in SPECIALS}  # before adding
    padded = len(tok) + 20
    model = build_tiny_llama(padded, hidden_size=16, num_layers=1, tie_word_embeddings=tied)
    with torch.no_grad():  # distinct rows everywhere, the padding rows included
        model.get_input_embeddings().weight.normal_(generator=torch.Generator().manual_seed(seed))
        lm_head_weight(model).add_(torch.randn(lm_head_weight(model).shape) if not tied else 0)
    emb = model.get_input_embeddings().weight.detach().double().clone()
    head = lm_head_weight(model).detach().double().clone()
    assert add_special_tokens(tok) == splits and len(tok) < padded
    ids = add_special_token_embeddings(model, tok, splits)
    assert model.get_input_embeddings().weight.shape[0] == padded
    new_emb = model.get_input_embeddings().weight.double()
    new_head = lm_head_weight(model).double()
    for s in SPECIALS:
        assert ids[s] == tok.convert_tokens_to_ids(s) < padded
        torch.testing.assert_close(new_emb[ids[s]], emb[splits[s]].mean(0), atol=1e-6, rtol=0)
        torch.testing.assert_close(new_head[ids[s]], head[splits[s]].mean(0), atol=1e-6, rtol=0)
    others = [i for i in range(padded) if i not in ids.values()]
    assert torch.equal(new_emb[others], emb[others])


def test_inspect_shows_non_ascii_text_whole(tokenizer, tmp_path, capsys):
    """`reflectioncoder inspect` on the edge samples: a character the byte-level tokenizer
    splits over several tokens reads whole in both views (it printed U+FFFD per token), and
    the marks sit where the reference labels and mask say."""
    from reflectioncoder.cli import main as cli_main

    tokenizer.save_pretrained(str(tmp_path / "tok"))
    data = _write(tmp_path / "edge.jsonl", list(edge_samples().values()))
    argv = ["inspect", "--data", data, "--tokenizer", str(tmp_path / "tok"), "--no-progress"]
    assert cli_main(argv + ["--step", "0", "--total-steps", "4", "--block-order", "etc"]) == 0
    out = capsys.readouterr().out
    assert "\ufffd" not in out
    ask = "<|user|><|text|>Write f(x) qui renvoie x + 1 — 日本<|endofblock|><|endofmessage|>"
    # teacher: the first instruction unlabelled, after BOS; the answer labelled through EOS
    assert f"<s>{ask}[[<|assistant|><|text|>Essai.<|endofblock|>" in out
    # student at rate 1/4, order etc: the first instruction and <|assistant|> hidden, the
    # execution block hidden, text and code visible; the end of the reflection hidden
    n_hidden = len(tokenizer.encode(ask, add_special_tokens=False)) + 2  # + <s>, <|assistant|>
    assert f"<~{n_hidden} hidden~><|text|>Essai.<|endofblock|><|code|>def f(x):" in out
    assert "print(f(1))<|endofblock|><~" in out and "<|text|>+1<|endofblock|><~1 hidden~>" in out
    # executions inside the final answer keep their student labels (SPEC §2)
    assert "[[<|assistant|><|code|>print(1)<|endofblock|><|execution|>1<|endofblock|>" in out
    assert "<|execution|>λ ✓<|endofblock|>" in out  # the teacher's view of that sample


def sentencepiece_like_tokenizer():
    """A Llama-style tokenizer (Metaspace pre-tokenizer, "▁" prepended to the first piece of a
    call only, byte fallback), trained here: tokenising block by block gives other ids at the
    seams than tokenising the whole text, which a byte-level BPE never shows."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=[f"<0x{i:02X}>" for i in range(256)],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    add_special_tokens(fast)
    return fast


def test_the_whole_text_is_tokenised_in_one_call(tmp_path):
    """SPEC §1: ids = [BOS] + tokenize(text) + [EOS], the whole text in ONE call; with a
    SentencePiece-style tokenizer block-by-block ids differ, and labels and the body follow
    the one-call ids."""
    tok = sentencepiece_like_tokenizer()
    sp = {s: tok.convert_tokens_to_ids(s) for s in SPECIALS}
    objs = list(edge_samples().values())
    samples, _ = load_dataset(DataConfig(files=[_write(tmp_path / "sp.jsonl", objs)]), tok)
    differ = 0
    for obj, t in zip(objs, samples, strict=True):
        ids = ids_ref(obj, tok)
        assert t.ids.tolist() == ids
        assert t.labels.tolist() == teacher_labels_ref(ids, sp)
        pieces = [
            piece
            for m in obj["messages"]
            for piece in (
                f"<|{m['role']}|>",
                *(
                    x
                    for b in m["content"]
                    for x in (f"<|{b['type']}|>", b["content"], "<|endofblock|>")
                ),
                "<|endofmessage|>",
            )
        ]
        by_block = [i for p in pieces for i in tok.encode(p, add_special_tokens=False)]
        differ += by_block != ids[1:-1]
        if t.is_reflection:
            assert t.student_labels.tolist() == student_labels_ref(ids, sp)
            assert (t.body_start, t.body_end) == body_ref(ids, sp)
    assert differ == len(objs)  # the test can tell the two tokenisations apart
