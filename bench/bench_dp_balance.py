"""Data-parallel balance: the useful share of micro-batch compute at 8, 16, 32 and 64 ranks,
simulated on the realistic length mix (no processes).

    python -m bench.bench_dp_balance --out bench/results/dp_balance.json

The paper's step: 512 samples (synthetic reflection samples: instruction 100-400, reflection
300-2500, answer 100-600 tokens), 16384-token micro-batches, masks drawn at mask rates 0, 0.5 and
1. Model of the cost: a micro-batch costs its token count (attention's quadratic part ignored:
samples are under 4K tokens and packed, so the linear layers dominate), and ranks run their j-th
micro-batches in lockstep (ZeRO-3 gathers the parameters at every forward, so the slowest rank
sets each one's pace). Useful share = tokens of real samples / (ranks x sum over j of the
largest j-th micro-batch): zero-weight padding and waiting both count as waste.

- ``before``: the previous plan (first-fit decreasing at full student length, dealt round-robin,
  short ranks padded with zero-weight copies of their first micro-batch);
- ``balanced``: ``packing.plan_step`` (balanced by tokens at the step's exact lengths).
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench import RESULTS
from bench.providers.common import commit, device_name, write_rows
from reflectioncoder.data.config import MaskConfig, PackingConfig
from reflectioncoder.data.packing import plan_step
from reflectioncoder.testing.synthetic import synthetic_samples

RATES = {0.0: (0, 100), 0.5: (49, 100), 1.0: (99, 100)}  # rate -> (step, total_steps)
RANKS = (8, 16, 32, 64)


def useful_share(slots: list[list[tuple[int, bool]]]) -> float:
    """slots[rank][j] = (tokens, is_padding) -> the lockstep useful share."""
    world, m = len(slots), len(slots[0])
    useful = sum(t for rank in slots for t, pad in rank if not pad)
    paced = sum(max(slots[r][j][0] for r in range(world)) for j in range(m))
    return useful / (world * paced) if paced else 1.0


def balanced_slots(plan) -> list[list[tuple[int, bool]]]:
    return [
        [(sum(plan.tokens[i] for i in g), pad) for g, pad in zip(gs, ps, strict=True)]
        for gs, ps in zip(plan.groups, plan.padding, strict=True)
    ]


def before_slots(plan, samples, budget: int, world: int) -> list[list[tuple[int, bool]]]:
    """The previous trainer: FFD at full student length, round-robin, padded with copies."""
    cost = [len(s) * (2 if plan.student_row[i] >= 0 else 1) for i, s in enumerate(samples)]
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(samples)), key=lambda i: (-cost[i], i)):
        for b, r in enumerate(room):
            if cost[i] <= r:
                bins[b].append(i)
                room[b] -= cost[i]
                break
        else:
            bins.append([i])
            room.append(budget - cost[i])
    per_rank = -(-len(bins) // world)
    slots = []
    for r in range(world):
        mine = [(sum(plan.tokens[i] for i in b), False) for b in bins[r::world]]
        first = mine[0][0] if mine else sum(plan.tokens[i] for i in bins[0])
        slots.append(mine + [(first, True)] * (per_rank - len(mine)))
    return slots


def run(samples_per_step: int, steps: int, budget: int, seed: int) -> list[dict]:
    cfg = MaskConfig(strategies=("block_mask",), block_order="tce")
    pack = PackingConfig(max_tokens=budget)
    pool = synthetic_samples(samples_per_step * steps, vocab_size=32000, seed=seed)
    common = {"kernel": "dp_balance", "device": device_name("cpu"), "commit": commit()}
    rows = []
    for world in RANKS:
        got: dict[str, list[float]] = {"before": [], "balanced": [], "plan_ms": []}
        per_rank = {"before": [], "balanced": []}
        for k in range(steps):
            samples = pool[k * samples_per_step : (k + 1) * samples_per_step]
            for step, total in RATES.values():
                t0 = time.perf_counter()
                plan = plan_step(samples, step, total, cfg, pack, seed, world)
                got["plan_ms"].append(1e3 * (time.perf_counter() - t0))
                for name, slots in (
                    ("before", before_slots(plan, samples, budget, world)),
                    ("balanced", balanced_slots(plan)),
                ):
                    got[name].append(useful_share(slots))
                    per_rank[name].append(len(slots[0]))
        size = f"{world} ranks, {samples_per_step} samples/step, {budget} tokens/micro-batch"
        for name in ("before", "balanced"):
            for mode, value, unit in (
                ("useful_share_min", min(got[name]), "ratio"),
                ("useful_share_mean", statistics.mean(got[name]), "ratio"),
                ("micro_batches_per_rank_mean", statistics.mean(per_rank[name]), "count"),
            ):
                rows.append(
                    {
                        **common,
                        "provider": name,
                        "size": size,
                        "mode": mode,
                        "value": value,
                        "unit": unit,
                    }
                )
        rows.append(
            {
                **common,
                "provider": "balanced",
                "size": size,
                "mode": "plan_ms_median",
                "value": statistics.median(got["plan_ms"]),
                "unit": "ms",
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=RESULTS / "dp_balance.json")
    parser.add_argument("--samples-per-step", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3, help="distinct steps, each at 3 rates")
    parser.add_argument("--max-tokens", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = run(args.samples_per_step, args.steps, args.max_tokens, args.seed)
    write_rows(rows, args.out)
    for r in rows:
        print(
            f"{r['size'][:9]:>9} {r['provider']:>9} {r['mode']:>28}: {r['value']:.4g} {r['unit']}"
        )


if __name__ == "__main__":
    main()
