"""Bad values in the DeepSpeed JSON stop the launch in one line naming the file, the line, the
column and the key path (exit 2, nothing written), where they passed the check before and failed
later or silently: a dtype DeepSpeed resolves only once the engine runs (``grad_accum_dtype``),
one its parser refuses with its own ValueError (``communication_data_type``), and an "auto" on a
key our filling does not fill (DeepSpeed took the string as the value: ``flops_profiler.enabled``
crashed with a TypeError, ``prescale_gradients`` stopped without the file)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from reflectioncoder.cli import main
from reflectioncoder.config_loader import load_config
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.deepspeed_config import deepspeed_config
from reflectioncoder.train.distributed import DistInfo

INFO = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), deepspeed=True)
BASE = {"bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}, "gradient_clipping": "auto"}


def _launch(tmp_path, capsys, extra: dict) -> tuple[int, list[str], str]:
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({**BASE, **extra}, indent=2))
    data = write_toy_jsonl(tmp_path / "d.jsonl", 4)
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--set", f"data.files=[{data}]",
            "--set", f"checkpoint.out_dir={out}", "--set", "distributed.backend=deepspeed",
            "--set", f"distributed.deepspeed_config={ds}"]  # fmt: skip
    code = main(argv)
    assert not os.path.exists(out)
    return code, capsys.readouterr().err.strip().splitlines(), str(ds)


@pytest.mark.parametrize(
    ("extra", "where", "reason"),
    [
        ({"data_types": {"grad_accum_dtype": "fp33"}}, "10:5: data_types.grad_accum_dtype",
         "'fp33' is not a dtype; one of fp32, bf16, fp16"),
        ({"communication_data_type": "fp33"}, "9:3: communication_data_type",
         "Supported data types: ['fp16', 'bf16', 'fp32']. Got: fp33"),
        # "enabled" is first in bf16 (line 3): the path's own one is located
        ({"flops_profiler": {"enabled": "auto"}}, "10:5: flops_profiler.enabled",
         "'auto' is not filled for this key"),
        ({"prescale_gradients": "auto"}, "9:3: prescale_gradients",
         "'auto' is not filled for this key"),
        # a value DeepSpeed's pydantic models refuse
        ({"zero_optimization": {"stage": "three"}}, "10:5: zero_optimization.stage",
         "(got 'three')"),
    ],
)  # fmt: skip
def test_a_bad_value_stops_in_one_located_line(tmp_path, capsys, extra, where, reason):
    code, err, ds = _launch(tmp_path, capsys, extra)
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"reflectioncoder train: {ds}:{where}: ")
    assert reason in err[0]


@pytest.mark.parametrize(
    "extra",
    [
        # DeepSpeed's own "auto" (its default); the dtypes we fill, or leave to DeepSpeed
        {"pipeline": {"stages": "auto"}, "communication_data_type": "auto",
         "data_types": {"grad_accum_dtype": "auto", "keep_in_fp32_modules": "auto"}},
        # config models drop "auto" (their default)
        {"tensorboard": {"enabled": "auto"}, "data_types": {"grad_accum_dtype": "bfloat16"}},
    ],
)  # fmt: skip
@pytest.mark.parametrize("fp32_sums", [True, False])
def test_autos_deepspeed_or_we_fill_pass_and_none_is_left_on_a_dtype(tmp_path, extra, fp32_sums):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({**BASE, **extra}, indent=2))
    overrides = ["distributed.backend=deepspeed", f"distributed.deepspeed_config={ds}",
                 f"distributed.fp32_grad_accum={str(fp32_sums).lower()}"]  # fmt: skip
    filled = deepspeed_config(load_config(base="tiny", overrides=overrides), INFO, hidden_size=64)
    # a dtype left "auto" took DeepSpeed's default (it refused the string, or failed at run time)
    assert filled.get("communication_data_type", "fp32") != "auto"
    assert filled.get("data_types", {}).get("grad_accum_dtype", "fp32") != "auto"
