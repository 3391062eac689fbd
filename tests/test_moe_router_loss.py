"""moe: a mixture-of-experts config that turns on the router's load-balancing loss
(``"output_router_logits": true`` with ``router_aux_loss_coef`` > 0: Mixtral, Qwen2/3-MoE, as
transformers defines them) trains with that term: ``coef x aux`` added to CE + KL, aux computed
per sample over its real tokens (its teacher and its student's visible tokens) as transformers'
own ``load_balancing_loss_func`` computes it over one forward's unmasked tokens, and averaged
over the step's samples (reflectioncoder/router_loss.py). It was refused: the packed forward
added no such term. A coefficient of 0 or the field false trains as before; a balancing loss of
another kind (DeepSeek's sequence-wise one, Doge's) is refused in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf
from test_sync_counts import Syncs, _marked_step
from test_trainer import tiny_config

from reflectioncoder.cli import main
from reflectioncoder.data.config import MaskConfig, PackingConfig
from reflectioncoder.data.packing import pack_rank, plan_step, zero_weight
from reflectioncoder.model import forward_hidden, load_model, prepare_model
from reflectioncoder.model_support import check_supported
from reflectioncoder.router_loss import balancing_loss, router_loss_of
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.synthetic import synthetic_samples
from reflectioncoder.train.loss_module import ReflectionLossModule
from reflectioncoder.train.trainer import Trainer

DATA = Path(__file__).parent / "data" / "reflection_small.jsonl"
VOCAB = 300
SIZES = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2,
)  # fmt: skip
MOE = {
    "mixtral": (tf.MixtralConfig, tf.MixtralForCausalLM, dict(num_local_experts=4)),
    "qwen3_moe": (tf.Qwen3MoeConfig, tf.Qwen3MoeForCausalLM, dict(num_experts=4)),
    "qwen2_moe": (tf.Qwen2MoeConfig, tf.Qwen2MoeForCausalLM, dict(num_experts=4)),
}
TOP_K, COEF = 2, 0.02
MLA = dict(kv_lora_rank=8, q_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8)


def _config(name: str, **fields):
    config_cls, _, experts = MOE[name]
    moe = dict(num_experts_per_tok=TOP_K, moe_intermediate_size=16, router_aux_loss_coef=COEF)
    return config_cls(**SIZES, **experts, **{**moe, "output_router_logits": True, **fields})


def _saved(name: str, folder: Path, **fields) -> Path:
    """A tiny model of ``name`` saved as users have it."""
    torch.manual_seed(0)
    MOE[name][1](_config(name, **fields)).save_pretrained(folder)
    return folder


def _step(seed: int, max_tokens: int = 4096):
    """A step of five synthetic samples (reflection and generation), its plan packed into
    micro-batches of at most ``max_tokens`` tokens."""
    mask, packing = MaskConfig(), PackingConfig(max_tokens=max_tokens)
    samples = synthetic_samples(
        5, vocab_size=VOCAB, seed=seed, instruction=(5, 20), reflection=(20, 60),
        answer=(5, 20), generation_fraction=0.3,
    )  # fmt: skip
    return pack_rank(plan_step(samples, 3, 10, mask, packing, seed), 0, mask, packing)


def _unpacked_aux(reference, batch) -> torch.Tensor:
    """The mean over the batch's samples of transformers' own ``load_balancing_loss_func``,
    each sample one forward of its rows (teacher, student: its visible tokens at their original
    positions), right-padded and masked as transformers masks padding, eager attention."""
    func = sys.modules[type(reference).__module__].load_balancing_loss_func
    cu, owner = batch.cu_seqlens.tolist(), batch.token_sample
    segments: dict[int, list[tuple[int, int]]] = {}
    for start, end in zip(cu, cu[1:], strict=False):
        segments.setdefault(int(owner[start]), []).append((start, end))
    total = torch.zeros((), dtype=torch.float64)
    for rows in segments.values():
        width = max(end - start for start, end in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.int64)
        pos = torch.zeros_like(ids)
        mask = torch.zeros_like(ids)
        for r, (start, end) in enumerate(rows):
            ids[r, : end - start] = batch.input_ids[start:end]
            pos[r, : end - start] = batch.position_ids[start:end]
            mask[r, : end - start] = 1
        out = reference(input_ids=ids, position_ids=pos, attention_mask=mask)
        total = total + func(out.router_logits, reference.num_experts, TOP_K, mask)
    return total / len(segments)


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe"])
def test_the_term_is_transformers_own_on_each_sample_unpacked(name, tmp_path, seed):
    folder = _saved(name, tmp_path / "model")
    ours = load_model(folder, dtype=torch.float64)
    prepare_model(ours)
    reference = tf.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float64, attn_implementation="eager"
    )
    for model in (ours, reference):  # torch's grouped GEMM takes no float64
        model.set_experts_implementation("eager")
    assert reference.config.output_router_logits and reference.router_aux_loss_coef == COEF
    (batch,) = _step(seed)
    assert batch.num_samples == 5 and len(batch.seq_lens) > 5  # teachers and students
    module = ReflectionLossModule(ours)
    loss, ce, kl, _ = module(batch)
    want = _unpacked_aux(reference, batch)
    assert module.aux_loss.dtype == torch.float64
    # transformers' function sums in float32 whatever the logits' dtype: its rounding alone
    torch.testing.assert_close(module.aux_loss, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(loss, ce + kl + COEF * module.aux_loss, rtol=1e-12, atol=0)
    # and its gradient: into each router's weights as the unpacked forwards' mean gives it
    hidden, logits = forward_hidden(ours, batch, router_logits=True)
    assert len(logits) == 2 and hidden.shape[0] == batch.num_tokens
    aux = balancing_loss(logits, batch.token_sample, batch.aux_weight, module.router_loss)
    routers = [layer.mlp.gate.weight for layer in ours.model.layers]
    got = torch.autograd.grad(aux, routers)
    expected = torch.autograd.grad(
        _unpacked_aux(reference, batch), [layer.mlp.gate.weight for layer in reference.model.layers]
    )
    for g, e in zip(got, expected, strict=True):
        assert e.abs().sum() > 0
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6 * e.abs().max().item())


def test_the_step_term_does_not_depend_on_the_packing(seed):
    """Each sample's weight is 1 / the step's samples: the micro-batches' sums add up to the
    same term however the step is cut; a zero-weight filler adds nothing. No host sync."""
    torch.manual_seed(seed)
    model = tf.MixtralForCausalLM(_config("mixtral")).double()
    model.set_experts_implementation("eager")  # torch's grouped GEMM takes no float64
    prepare_model(model)
    spec = router_loss_of(model)
    whole = 0
    for max_tokens in (4096, 120):
        batches = _step(seed, max_tokens)
        assert (len(batches) == 1) == (max_tokens == 4096)
        sums = torch.zeros((), dtype=torch.float64)
        for batch in batches:
            _, logits = forward_hidden(model, batch, router_logits=True)
            with Syncs() as syncs:
                aux = balancing_loss(logits, batch.token_sample, batch.aux_weight, spec)
                aux.backward()
            assert syncs.seen == []
            sums = sums + aux.detach()
        whole = sums if max_tokens == 4096 else whole
    torch.testing.assert_close(sums, whole, rtol=1e-12, atol=0)
    filler = zero_weight(batches[0])
    _, logits = forward_hidden(model, filler, router_logits=True)
    assert balancing_loss(logits, filler.token_sample, filler.aux_weight, spec) == 0


@pytest.mark.parametrize("name", sorted(MOE))
def test_a_zero_coefficient_or_no_router_logits_adds_nothing(name, seed):
    (batch,) = _step(seed)
    losses = []
    for fields in ({"router_aux_loss_coef": 0.0}, {"output_router_logits": False}):
        torch.manual_seed(seed)
        model = MOE[name][1](_config(name, **fields))
        check_supported(model)
        prepare_model(model)
        module = ReflectionLossModule(model)
        assert module.router_loss is None
        loss, ce, kl, _ = module(batch)
        assert module.aux_loss is None
        torch.testing.assert_close(loss, ce + kl, rtol=1e-6, atol=0)
        losses.append(loss)
    assert torch.equal(losses[0], losses[1])  # the same weights, the same objective


def test_a_config_without_a_balancing_loss_still_trains():
    """DeepSeek-V2/V3 record router logits but transformers adds no loss of them: no
    coefficient, nothing added."""
    config = tf.DeepseekV3Config(
        **SIZES, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
        n_group=1, topk_group=1, output_router_logits=True, **MLA,
    )  # fmt: skip
    assert getattr(config, "router_aux_loss_coef", None) is None
    model = tf.DeepseekV3ForCausalLM(config)
    check_supported(model)
    assert router_loss_of(model) is None


def test_deepseeks_own_balancing_loss_is_refused_in_one_line():
    """DeepSeek-V2/V3's released configs carry aux_loss_alpha (their remote code's
    sequence-wise loss), which transformers' port does not compute: asked for with
    output_router_logits, it is refused rather than silently dropped."""
    config = tf.DeepseekV3Config(
        **SIZES, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
        n_group=1, topk_group=1, output_router_logits=True, aux_loss_alpha=0.0001, **MLA,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"aux_loss_alpha = 0.0001 .* set \"output_router") as err:
        check_supported(tf.DeepseekV3ForCausalLM(config))
    assert "\n" not in str(err.value)
    config.output_router_logits = False  # as transformers trains it: no balancing loss
    check_supported(tf.DeepseekV3ForCausalLM(config))


def test_another_kind_of_router_loss_is_refused_in_one_line():
    """Doge's balancing loss takes its product-key routing too: not the Switch-style term (its
    attention is refused first by check_supported; the router's refusal stands on its own)."""
    config = tf.DogeConfig(
        **SIZES, is_moe=True, num_experts=16, num_experts_per_tok=2, output_router_logits=True,
        router_aux_loss_coef=0.01,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"DogeForCausalLM's own router loss .* set \"output"):
        router_loss_of(tf.DogeForCausalLM(config))
    config.output_router_logits = False
    assert router_loss_of(tf.DogeForCausalLM(config)) is None


def _save_mixtral(folder: Path, output_router_logits: bool) -> Path:
    """A tiny Mixtral beside save_tiny_model's tokenizer, saved as users have it."""
    from reflectioncoder.testing.tiny_model import save_tiny_model

    save_tiny_model(folder, DATA.read_text().splitlines())
    llama = json.loads((folder / "config.json").read_text())
    torch.manual_seed(0)
    config = tf.MixtralConfig(
        **{**SIZES, "vocab_size": llama["vocab_size"]}, num_local_experts=4,
        num_experts_per_tok=2, output_router_logits=output_router_logits,
        router_aux_loss_coef=COEF, bos_token_id=llama["bos_token_id"],
        eos_token_id=llama["eos_token_id"], pad_token_id=llama["pad_token_id"],
    )  # fmt: skip
    tf.MixtralForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("router_logits", [True, False])
def test_train_logs_the_term_as_its_own_metric(tmp_path, capsys, router_logits):
    folder = _save_mixtral(tmp_path / "model", output_router_logits=router_logits)
    out = tmp_path / "run"
    sets = {"data.files": f"[{DATA}]", "model.name_or_path": folder, "train.max_steps": 2,
            "data.validation_files": f"[{DATA}]"}  # fmt: skip
    assert main(train_argv({**sets, "checkpoint.out_dir": out}, "--no-progress")) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (held_out,) = [row for row in rows if "val_loss" in row]  # at the end of training
    if router_logits:  # the held-out loss is the training loss's objective, its term apart
        aux = held_out["val_aux_loss"]
        assert held_out["val_loss"] == pytest.approx(
            held_out["val_ce"] + held_out["val_kl"] + COEF * aux
        )
    else:
        assert "val_aux_loss" not in held_out
    rows = [row for row in rows if "loss" in row]
    assert len(rows) == 2
    for row in rows:
        if not router_logits:
            assert "aux_loss" not in row
            continue
        assert 1.0 <= row["aux_loss"] <= 4.0  # top-2 of 4: 2 when balanced, E = 4 at most
        assert row["loss"] == pytest.approx(row["ce"] + row["kl"] + COEF * row["aux_loss"])


@pytest.mark.parametrize("policy", ["full", "save_gemms", "mlp_rerun"])
def test_checkpointing_keeps_the_routers_gradient(policy, seed):
    """The router logits a checkpointed layer recorded in its forward carry their gradient
    (torch's non-reentrant checkpoint); the recompute records none again."""
    (batch,) = _step(seed)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(seed)
        model = tf.MixtralForCausalLM(_config("mixtral", router_aux_loss_coef=0.5)).double()
        model.set_experts_implementation("eager")
        prepare_model(model, gradient_checkpointing=checkpointing, checkpointing_policy=policy)
        module = ReflectionLossModule(model)
        module(batch)[0].backward()
        grads.append([layer.mlp.gate.weight.grad for layer in model.model.layers])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-12, atol=0)


def test_a_step_with_the_term_syncs_once_and_never_in_a_micro_batch(tmp_path, seed):
    """tests/test_sync_counts.py's count through Trainer.train_step, of a Mixtral with its
    balancing loss (transformers' default grouped GEMM of experts): none from the first
    micro-batch's start to the optimizer step's launch, one a step (the stats' read)."""
    folder = _save_mixtral(tmp_path / "model", output_router_logits=True)
    extra = ("packing.max_tokens=160", f"model.name_or_path={folder}")
    trainer = Trainer(tiny_config(tmp_path, seed, n=12, extra=extra))
    try:
        assert trainer.module.router_loss is not None
        for step in range(2):  # the first step too
            marks, seen = _marked_step(trainer)
            assert [kind for kind, _ in marks].count("micro-batch") >= 2, marks
            assert {n for _, n in marks} == {0} and len(seen) <= 1, (step, marks, seen)
    finally:
        trainer.close()
