"""Synthetic reflection samples: realistic lengths, SPEC structure."""

from __future__ import annotations

from reference.serialise import IGNORE, student_labels_ref, teacher_labels_ref

from reflectioncoder.testing.synthetic import default_special_ids, synthetic_samples


def test_lengths_and_structure(seed):
    vocab = 32000
    sp = default_special_ids(vocab)
    samples = synthetic_samples(40, vocab, seed, generation_fraction=0.25, first_uid=7)
    assert [s.uid for s in samples] == list(range(7, 47))
    kinds = set()
    for s in samples:
        ids = s.ids.tolist()
        assert ids[0] == 1 and ids[-1] == 2
        assert s.labels.tolist() == teacher_labels_ref(ids, sp)
        if not s.is_reflection:
            assert (s.student_labels == IGNORE).all() and not s.blocks
            continue
        assert s.student_labels.tolist() == student_labels_ref(ids, sp)
        body = s.body_end - s.body_start
        assert 300 <= body <= 2501
        # BOS, user, text come before the instruction; eob, eom, asst after: body_start = n + 6.
        assert 100 <= s.body_start - 6 <= 400
        answer = len(s) - s.answer_start - 5  # asst text .. eob eom eos
        assert 100 <= answer <= 600
        assert s.blocks[0][0] == s.body_start and s.blocks[-1][1] == s.body_end
        assert all(a[1] == b[0] for a, b in zip(s.blocks, s.blocks[1:], strict=False))
        kinds |= {b[2] for b in s.blocks}
        content = s.ids[s.body_start : s.body_end]
        assert (content >= 3).all() and (content < vocab).all()
    assert kinds == {"text", "code", "execution"}
