"""Host time of issuing one decoder layer's work in eager PyTorch (for bench/step_model.py).

    python -m bench.bench_host_overhead --out bench/results/host_overhead.json

A Llama decoder stack (transformers' modules, as the trainer runs them) at tiny widths (hidden
64, 96 tokens): its kernels cost next to nothing, so the CPU time of a forward + backward is
what the host spends issuing the ops (Python, the dispatcher, autocast, autograd, checkpoint
recompute; a tiny CPU kernel stands in for a CUDA launch). Measured at two depths, the slope is
one layer's host time (embedding, final norm and head drop out). Variants: ``liger`` (RMSNorm,
RoPE and SwiGLU each one op forward and at most two backward, as Liger's Triton kernels launch)
or ``hf`` (transformers' eager ops); bf16 weights or fp32 weights under bf16 autocast;
checkpointing off or on every layer (``use_reentrant=False``). Attention is one op forward and
one backward over the packed tokens (a stand-in for one varlen launch on CUDA: a CPU attention
kernel would count its own compute as host time). CPU time of this process (``process_time``),
the least of several rounds, so other load on a shared machine counts less; one thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.providers.common import commit

TOKENS = 96
DEPTHS = (4, 12)


class _MulFn(torch.autograd.Function):
    """One op forward, two backward: a stand-in for one fused Triton kernel's launches."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g * b, (g * a).sum_to_size(b.shape)


def _fused_rms_norm(self, x):
    return _MulFn.apply(x, self.weight)


def _fused_rope(q, k, cos, sin, *args, **kwargs):
    return _MulFn.apply(q, cos.unsqueeze(1)[..., :1]), _MulFn.apply(k, sin.unsqueeze(1)[..., :1])


def _fused_mlp(self, x):
    return self.down_proj(_MulFn.apply(self.gate_proj(x), self.up_proj(x)))


def _one_call_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """One op forward and one backward, as one varlen kernel launches on CUDA (a CPU SDPA here
    computed 16 heads x 96^2 on the host: 3.2 of the 4.0 ms a bf16 layer measured with it)."""
    return _MulFn.apply(query, query.new_ones(())).transpose(1, 2), None


class _Count(TorchDispatchMode):
    """Ops that reach a kernel (views and other aliases left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.overloadpacket.__name__ not in ("detach", "lift_fresh"):
            self.ops += 1
        return func(*args, **(kwargs or {}))


def _model(layers: int, kernels: str, precision: str, ckpt: bool):
    from transformers import AttentionInterface
    from transformers.models.llama import modeling_llama as ml

    from reflectioncoder.model import build_tiny_llama

    AttentionInterface.register("rc_one_call", _one_call_attention)
    # the CLI run's 1.06B layer shape (16 / 4 heads, vocabulary 407) at width 64
    model = build_tiny_llama(
        407, 64, layers, 16, 4, 172, attn_implementation="rc_one_call", seed=0
    ).train()
    if precision == "bf16":
        model.to(torch.bfloat16)
    if ckpt:
        model.activation_checkpointing_enable({"use_reentrant": False})
    patched = {}
    if kernels == "liger":
        patched = {
            (ml.LlamaRMSNorm, "forward"): _fused_rms_norm,
            (ml.LlamaMLP, "forward"): _fused_mlp,
            (ml, "apply_rotary_pos_emb"): _fused_rope,
        }
    return model, patched


def _step(model, ids, autocast: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
    hidden.float().sum().backward()


def measure(layers: int, kernels: str, precision: str, ckpt: bool, rounds: int) -> dict:
    """CPU seconds and ops of one forward + backward of ``layers`` layers."""
    model, patched = _model(layers, kernels, precision, ckpt)
    saved = {key: getattr(*key) for key in patched}
    for (owner, name), fn in patched.items():
        setattr(owner, name, fn)
    try:
        ids = torch.randint(0, 407, (1, TOKENS))
        autocast = precision == "autocast"
        for _ in range(3):
            _step(model, ids, autocast)
        counter = _Count()
        with counter:
            _step(model, ids, autocast)
        best = float("inf")
        for _ in range(rounds):
            t0 = time.process_time()
            for _ in range(4):
                _step(model, ids, autocast)
            best = min(best, (time.process_time() - t0) / 4)
    finally:
        for (owner, name), fn in saved.items():
            setattr(owner, name, fn)
    return {"cpu_s": best, "ops": counter.ops}


def layer_rows(rounds: int) -> list[dict]:
    rows = []
    for kernels in ("liger", "hf"):
        for precision in ("bf16", "autocast"):
            for ckpt in (False, True):
                lo, hi = (measure(n, kernels, precision, ckpt, rounds) for n in DEPTHS)
                span = DEPTHS[1] - DEPTHS[0]
                per_layer_s = (hi["cpu_s"] - lo["cpu_s"]) / span
                ops = (hi["ops"] - lo["ops"]) / span
                rows.append(
                    {
                        "kernels": kernels,
                        "precision": precision,
                        "checkpointing": "full" if ckpt else "none",
                        "host_s_per_layer": round(per_layer_s, 6),
                        "ops_per_layer": ops,
                        "us_per_op": round(1e6 * per_layer_s / ops, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = layer_rows(args.rounds)
    import transformers

    meta = {"torch": torch.__version__, "transformers": transformers.__version__}
    meta |= {"commit": commit(), "tokens": TOKENS, "depths": DEPTHS, "threads": 1}
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
