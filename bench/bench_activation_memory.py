"""Activation bytes a decoder layer keeps for the backward, per token, for each checkpointing
policy (model.checkpointing_policy), measured on the CPU:

    python -m bench.bench_activation_memory --out bench/results/activation_memory.json
    python -m bench.bench_activation_memory --shape gqa8 --out /tmp/gqa8.json   # one shape

For each policy the model's forward + fused loss runs over one packed micro-batch at 2 and at 4
layers; what the process still holds afterwards (glibc's in-use heap, ``mallinfo2``: every
tensor the autograd graph or a checkpoint keeps) less what it held before, differenced between
the two depths, is 2 layers' worth: divided by 2 x tokens it is the bytes per token and layer.
Rows also give it per hidden unit (bytes / token / layer / D), so that the memory of a
7B/13B/34B layer (D = 4096 / 5120 / 8192, bf16 halving fp32's bytes) is predicted before a run.

``offload`` (reflectioncoder/activation_offload.py): on the CPU the host is the device, so the
heap holds what ``save_gemms`` holds; the layer's stores count the bytes they sent to the host
(``offloaded_bytes_per_token_layer``), and what a GPU keeps (``bytes_per_token_layer``) is the
heap's figure less those.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import RESULTS
from bench.providers.common import write_rows
from reflectioncoder.testing.heap import held_by_loss, prepare_for, synthetic_batch

POLICIES = ("none", "full", "save_gemms", "mlp_rerun", "alternate", "offload")


def _model_and_batch(layers: int, policy: str, sizes: dict, tokens: int, seed: int):
    from reflectioncoder.model import build_tiny_llama

    model = build_tiny_llama(sizes["vocab"], num_layers=layers, seed=seed, **sizes["arch"])
    prepare_for(model, policy)
    return model, synthetic_batch(max(1, tokens // 700), sizes["vocab"], seed)


def held_after_forward(layers: int, policy: str, sizes: dict, tokens: int, seed: int = 0):
    """(bytes held after the forward + loss, tokens of the batch, the loss) of one setting."""
    from reflectioncoder.train.loss_module import ReflectionLossModule

    model, batch = _model_and_batch(layers, policy, sizes, tokens, seed)
    held, (loss, *_) = held_by_loss(ReflectionLossModule(model), batch)
    return held, batch.num_tokens, loss, model


def _offloaded(model) -> int:
    schedule = getattr(model, "rc_offload", None)
    return schedule.offloaded_bytes() if schedule is not None else 0


def per_token_and_layer(policy: str, sizes: dict, tokens: int) -> dict:
    # A first forward in a process leaves memory the next ones reuse (about 10 MB at 4K
    # tokens): counted in the 2-layer run alone, it took 1.3 KB a token and layer off the
    # first row measured (``none``'s at each shape, 6% low). Warmed, every row is the same
    # in any order.
    held_after_forward(2, policy, sizes, tokens)
    held2, t, _, model2 = held_after_forward(2, policy, sizes, tokens)
    sent2 = _offloaded(model2)
    del model2
    held4, _, _, model4 = held_after_forward(4, policy, sizes, tokens)
    sent = (_offloaded(model4) - sent2) / (2 * t)
    per = (held4 - held2) / (2 * t) - sent  # what stays on the device
    d = sizes["arch"]["hidden_size"]
    row = {"policy": policy, "tokens": t, "bytes_per_token_layer": per,
           "bytes_per_token_layer_per_hidden": per / d, "dtype": "fp32", **sizes}  # fmt: skip
    if policy == "offload":
        row["offloaded_bytes_per_token_layer"] = sent
        row["offloaded_bytes_per_token_layer_per_hidden"] = sent / d
    return row


SIZES = {
    "vocab": 512,
    "arch": {"hidden_size": 256, "intermediate_size": 688, "num_heads": 4, "num_kv_heads": 2},
}
# The shapes measured (``--shape``): ``base`` (SIZES: the 7B's I/D, KV width D/2); ``gqa8``
# the 34B's KV width (D/8: 8 query heads, 1 KV head) at the same I/D; ``mha_i4``
# multi-head attention (KV width D) at another MLP ratio (I = 4D); ``7b_d512`` the 7B's
# ratios (multi-head, I/D = 2.6875) at twice the width. activation_checkpointing's
# ``kept_per_token`` is checked against every row (tests/test_planshape_bytes.py).
SHAPES = {
    "base": SIZES,
    "gqa8": {"vocab": 512, "arch": {"hidden_size": 256, "intermediate_size": 688,
                                    "num_heads": 8, "num_kv_heads": 1}},
    "mha_i4": {"vocab": 512, "arch": {"hidden_size": 256, "intermediate_size": 1024,
                                      "num_heads": 4, "num_kv_heads": 4}},
    "7b_d512": {"vocab": 512, "arch": {"hidden_size": 512, "intermediate_size": 1376,
                                       "num_heads": 8, "num_kv_heads": 8}},
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--shape", choices=SHAPES, action="append",
                        help="the shapes to measure (repeatable; default: all)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS / "activation_memory.json")
    args = parser.parse_args()
    rows = []
    for name in args.shape or SHAPES:
        rows += measure_shape(name, args.tokens)
    write_rows(rows, args.out)
    print(f"wrote {args.out}")


def measure_shape(name: str, tokens: int) -> list[dict]:
    """Every policy's row at one of ``SHAPES``, printed."""
    sizes = SHAPES[name]
    rows = [{"shape": name, **per_token_and_layer(p, sizes, tokens)} for p in POLICIES]
    none = rows[0]["bytes_per_token_layer"]
    print(f"{name}: fp32, {sizes['arch']}, {rows[0]['tokens']} tokens:")
    for r in rows:
        r["vs_none"] = r["bytes_per_token_layer"] / none
        per, per_d = r["bytes_per_token_layer"], r["bytes_per_token_layer_per_hidden"]
        sent = r.get("offloaded_bytes_per_token_layer_per_hidden")
        to_host = f"; {sent:.2f} x D to the host" if sent is not None else ""
        print(
            f"  {r['policy']:11s} {per:9.0f} B/token/layer ({per_d:.2f} x D; "
            f"{r['vs_none']:.3f}x{to_host})"
        )
    return rows


if __name__ == "__main__":
    main()
