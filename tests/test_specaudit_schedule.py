"""SPEC §3's schedule as the trainer applies it: optimizer step k (from 0) of a run of T steps
packs students masked at r = min((k + 1) / T, 1), to the last step, where the student sees none
of the reflection. Token-count strategies make every rate visible (block_mask's thresholds hid
an off-by-one in T at this run's rates: 1/4 and 1/5 both hide one block type)."""

from __future__ import annotations

from reference.mask import body_ref, rate_ref, visible_drawn
from reference.serialise import SPECIALS
from test_trainer import tiny_config

from reflectioncoder.data.masking import sample_rng
from reflectioncoder.train.trainer import Trainer

STRATEGIES = ["sequential_token_mask", "random_token_mask"]


def test_each_step_packs_its_students_at_its_rate(tmp_path, seed):
    cfg = tiny_config(tmp_path, seed, n=16, extra=(f"mask.strategies=[{','.join(STRATEGIES)}]",))
    trainer = Trainer(cfg)
    try:
        sp = {s: trainer.tokenizer.convert_tokens_to_ids(s) for s in SPECIALS}
        total = trainer.total_steps
        assert total == 4
        for step in range(total):
            rate = rate_ref(step, total)
            want = 0
            for i in trainer.plan[step]:
                s = trainer.samples[i]
                ids = s.ids.tolist()
                want += len(ids)  # the teacher
                if not s.is_reflection:
                    continue
                rng = sample_rng(cfg.train.seed, step, s.uid)
                visible = visible_drawn(ids, sp, STRATEGIES, cfg.mask.block_order, rate, rng)
                want += sum(visible)
                if step == total - 1:  # r = 1: nothing of the reflection, nor before it
                    _, end = body_ref(ids, sp)
                    assert not any(visible[: end + 1]) and all(visible[end + 1 :])
            batches = trainer.step_batches(step)
            assert sum(b.num_tokens for b in batches) == want, f"step {step}, rate {rate}"
    finally:
        trainer.close()
