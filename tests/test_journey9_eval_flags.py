"""`evaluate` refuses a flag that would change nothing rather than drop it (as `--languages`
off `--task multiple` and build-data's `--base-url` off a model backend already are): a
generation flag with `--samples`, where nothing is generated (`--temperature 0.8` scored the
file as it is); `--base-url` without `--backend openai` (the local `--model` folder generated,
the server named was never asked); `--tensor-parallel` off vLLM. One line naming the flag,
exit 2, before any model or sandbox runs; the defaults, given explicitly, still pass."""

from __future__ import annotations

import json

import pytest

from reflectioncoder.cli import main
from reflectioncoder.testing.tiny_model import save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    texts = ["def add(x, y):\n    return x + y\n", "Write a Python function."] * 10
    return save_tiny_model(tmp_path_factory.mktemp("m") / "model", texts)


@pytest.fixture
def samples(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return False\n"}))
    return path


def _evaluate(capsys, *argv: str) -> tuple[int, str]:
    code = main(["evaluate", "--task", "humaneval", "--no-progress", *argv])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--temperature", "0.8"),
        ("--n-samples", "5"),
        ("--max-new-tokens", "64"),
        ("--prompt-format", "chat"),
        ("--backend", "openai"),
        ("--base-url", "http://127.0.0.1:8000/v1"),
        ("--threads", "1"),
        ("--device", "cpu"),
        ("--save-samples", "out.jsonl"),
    ],
)
def test_a_generation_flag_with_samples_is_named(capsys, samples, shared_dir, flag, value):
    code, err = _evaluate(capsys, "--samples", str(samples), flag, value,
                          "--data-dir", str(shared_dir / "evaldata"))  # fmt: skip
    assert code == 2
    assert err == (
        f"reflectioncoder evaluate: {flag}: only with --model (it sets how samples are "
        "generated); --samples are scored as they are"
    )


def test_the_defaults_given_with_samples_still_score(capsys, samples, shared_dir, tmp_path):
    out = tmp_path / "r.json"
    data = str(shared_dir / "evaldata")
    code, _ = _evaluate(capsys, "--samples", str(samples), "--temperature", "0", "--seed", "0",
                        "--limit", "1", "--data-dir", data, "--json", str(out))  # fmt: skip
    assert code == 0 and json.loads(out.read_text())["scores"]["HumanEval"]["pass@1"] == 0.0


def test_base_url_without_the_openai_backend_is_named(capsys, model_dir, tmp_path):
    code, err = _evaluate(capsys, "--model", str(model_dir), "--base-url",
                          "http://127.0.0.1:9/v1", "--json", str(tmp_path / "r.json"))  # fmt: skip
    assert code == 2
    assert err == (
        "reflectioncoder evaluate: --base-url: needs --backend openai (--backend hf runs "
        "--model here, not on that server)"
    )
    assert not (tmp_path / "r.json").exists()


def test_tensor_parallel_off_vllm_is_named(capsys, model_dir, tmp_path):
    code, err = _evaluate(capsys, "--model", str(model_dir), "--tensor-parallel", "2",
                          "--json", str(tmp_path / "r.json"))  # fmt: skip
    assert (code, err) == (
        2,
        "reflectioncoder evaluate: --tensor-parallel: needs --backend vllm, not --backend hf",
    )
