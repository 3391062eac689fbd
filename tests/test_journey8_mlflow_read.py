"""docs/training.md's way to read a run's MLflow store works with what the `mlflow` extra
installs. It said `mlflow ui --backend-store-uri OUT/mlruns`: mlflow-skinny has no UI (`No
module named 'flask'`), and MLflow 3.18 refuses to read a file store without
MLFLOW_ALLOW_FILE_STORE=true (`... is in maintenance mode`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reflectioncoder.config import LoggingConfig
from reflectioncoder.train.metrics import MetricsLogger

DOC = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def _documented_block() -> str:
    text = DOC.read_text(encoding="utf-8")
    return re.search(r"```bash\n(export MLFLOW_ALLOW_FILE_STORE=true .*?)```", text, re.S).group(1)


@pytest.mark.skipif(shutil.which("mlflow", path=os.path.dirname(sys.executable)) is None,
                    reason="mlflow not installed (pip install -e '.[mlflow]')")  # fmt: skip
def test_the_documented_mlflow_commands_list_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = LoggingConfig(report_to=["mlflow"], progress=False, plot=False)
    metrics = MetricsLogger(Path("runs/tiny"), cfg, total_steps=1, run_config={"seed": 1})
    metrics.log({"step": 1, "loss": 2.0, "kl": 0.1, "samples": 2, "tokens": 9})
    metrics.close(plot=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env.get('PATH', '')}"
    block = _documented_block()
    first = block.split("mlflow runs list")[0]  # export + experiments search
    found = subprocess.run(["bash", "-c", first], env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr[-1500:]
    exp_id = re.search(r"^(\d+)\s+reflectioncoder\s", found.stdout, re.M).group(1)
    script = block.replace("--experiment-id ID", f"--experiment-id {exp_id}")
    listed = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr[-1500:]
    assert re.search(r"^\S.*\s+runs-tiny-\d{8}-\d{4}\s+[0-9a-f]{32}\s*$", listed.stdout, re.M), (
        listed.stdout
    )
