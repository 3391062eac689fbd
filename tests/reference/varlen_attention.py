"""Float64 reference of packed causal attention: each segment on its own, written out."""

from __future__ import annotations

import math

import torch


def varlen_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seqlens: list[int],
    causal: bool = True,
    softmax_scale: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """q (T, Hq, Dh), k/v (T, Hkv, Dh) -> (T, Hq, Dh) float64, segment by segment; ``softcap``
    c: the scores c tanh(s / c) before the mask and softmax (transformers' Gemma 2 eager)."""
    q, k, v = q.double(), k.double(), v.double()
    hq, hkv, dh = q.shape[1], k.shape[1], q.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(dh)
    out = torch.zeros_like(q)
    start = 0
    for n in seqlens:
        for h in range(hq):
            g = h // (hq // hkv)  # the kv head this query head shares (GQA)
            qs = q[start : start + n, h]
            ks = k[start : start + n, g]
            vs = v[start : start + n, g]
            scores = qs @ ks.T * scale
            if softcap:
                scores = torch.tanh(scores / softcap) * softcap
            if causal:
                future = torch.ones(n, n, dtype=torch.bool).triu(1)
                scores = scores.masked_fill(future, float("-inf"))
            out[start : start + n, h] = torch.softmax(scores, dim=-1) @ vs
        start += n
    return out


def varlen_attention_reference_grad(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seqlens: list[int],
    causal: bool = True,
    softmax_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) in float64 of ``varlen_attention_reference``, written out without autograd
    (usable inside a dispatcher kernel, where autograd is off):
    P = softmax(s), dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)), dQ = s dS K, dK = s dS^T Q.
    """
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[2])
    out = varlen_attention_reference(q, k, v, seqlens, causal, scale)
    lse = varlen_attention_reference_lse(q, k, seqlens, causal, scale)
    return varlen_attention_grad_from_lse(grad_out, q, k, v, out, lse, seqlens, causal, scale)


def _masked_scores(qs, ks, scale, causal):
    scores = qs @ ks.T * scale
    if causal:
        future = torch.ones(len(qs), len(ks), dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return scores


def varlen_attention_reference_lse(
    q: torch.Tensor, k: torch.Tensor, seqlens: list[int], causal: bool, softmax_scale: float
) -> torch.Tensor:
    """(Hq, T) float64 log-sum-exp of each row's scaled, masked scores (the flash kernels' lse)."""
    q, k = q.double(), k.double()
    hq, hkv = q.shape[1], k.shape[1]
    lse = torch.empty(hq, q.shape[0], dtype=torch.float64)
    start = 0
    for n in seqlens:
        rows = slice(start, start + n)
        for h in range(hq):
            scores = _masked_scores(q[rows, h], k[rows, h // (hq // hkv)], softmax_scale, causal)
            lse[h, rows] = torch.logsumexp(scores, dim=-1)
        start += n
    return lse


def varlen_attention_grad_from_lse(
    grad_out, q, k, v, out, lse, seqlens: list[int], causal: bool, softmax_scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) in float64 as a flash kernel's backward computes them: from the forward's
    ``out`` (T, Hq, Dh) and ``lse`` (Hq, T), not from a second forward:
    P = exp(s - lse), dS = P * (dO V^T - rowsum(dO * out))."""
    q, k, v, do, out, lse = (t.double() for t in (q, k, v, grad_out, out, lse))
    hq, hkv = q.shape[1], k.shape[1]
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    start = 0
    for n in seqlens:
        rows = slice(start, start + n)
        for h in range(hq):
            g = h // (hq // hkv)
            qs, ks, vs, dos = q[rows, h], k[rows, g], v[rows, g], do[rows, h]
            p = torch.exp(_masked_scores(qs, ks, softmax_scale, causal) - lse[h, rows, None])
            ds = p * (dos @ vs.T - (dos * out[rows, h]).sum(-1, keepdim=True))
            dq[rows, h] = softmax_scale * ds @ ks
            dk[rows, g] += softmax_scale * ds.T @ qs
            dv[rows, g] += p.T @ dos
        start += n
    return dq, dk, dv
