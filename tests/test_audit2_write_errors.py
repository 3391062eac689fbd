"""An output the system refuses to write (a full disk, a read-only or unwritable folder) is named
by the path the user gave, not by our temporary file beside it (`.NAME.tmpPID`), in one line,
exit 1 (issue 11: one line naming the problem); the disk-full handling of checkpoints still sees
an OSError."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from reflectioncoder.cli import main as cli_main
from reflectioncoder.errors import atomic_write_text

OPENAI = Path(__file__).resolve().parent / "data" / "prepare" / "openai.jsonl"


def test_atomic_write_names_the_target_on_a_full_disk(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    real_write = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".result.json.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError) as err:
        atomic_write_text(target, "{}")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []  # no temporary file left


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_prepare_data_into_an_unwritable_place_names_the_output(capsys):
    out = "/proc/audit2-out.jsonl"  # no file can be created there, as root too
    argv = ["prepare-data", "--in", str(OPENAI), "--out", out, "--no-progress"]
    assert cli_main([*argv, "--no-decontaminate"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ".tmp" not in err, err
    assert err.startswith(f"reflectioncoder prepare-data: {out}: ")
