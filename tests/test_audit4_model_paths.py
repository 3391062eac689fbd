"""A missing model folder given as a path (`./m`, `../final`, `~/model`: one slash)
is 'folder not found', not 'a hub name not in the local Hugging Face cache' with a
`huggingface-cli download ./m` to run (issue 11: one line naming the problem). Only an
`org/name` hub id is looked up in the cache."""

from __future__ import annotations

import pytest

from reflectioncoder.errors import UserError
from reflectioncoder.model import resolve_model_path


@pytest.mark.parametrize("name", ["./nonexist", "../final", "~/model", "runs/x/final", ".hidden/m"])
def test_a_missing_path_is_a_folder_not_found(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        resolve_model_path(name)
    assert str(err.value).endswith("model.name_or_path: folder not found")
    assert "hub" not in str(err.value)


def test_a_hub_id_outside_the_cache_says_how_to_download_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="org/model-1.5b: a hub name not in the local Hugging"):
        resolve_model_path("org/model-1.5b")
