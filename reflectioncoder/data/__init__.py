"""reflectioncoder.data: from ReflectionSeq jsonl files to packed micro-batches (SPEC §1-3).

- ``schema``: load and validate jsonl (errors name file:line:field).
- ``tokenize``: SPEC constants, ``add_special_tokens``, serialisation, labels, ``TokenizedSample``.
- ``dataset``: ``load_dataset`` (upsampling, over-length report, multi-process, disk cache).
- ``masking``: the dynamic mask (strategies, schedule, deterministic draws, host application).
- ``packing``: ``PackedBatch``, ``StepPlan`` (``plan_step``), ``pack_rank``; ``balance``: each
  rank's micro-batches balanced by tokens; ``normalisation``: ``step_counts``, loss weights.
- ``config``: ``DataConfig``, ``MaskConfig``, ``PackingConfig``.
- ``inspect``: the ``reflectioncoder inspect`` command.
- ``prepare``: the ``reflectioncoder prepare-data`` command (``readers`` for jsonl / json /
  parquet / ``datasets`` folders, ``formats`` for the conversions, ``decontaminate``).
"""
