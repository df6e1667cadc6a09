"""``load_archive_config``: the sections a reader of the archive needs, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from deswm._config import load_archive_config, load_config
from deswm._errors import ConfigError


def test_only_archive_is_needed_and_paths_resolve(tmp_path: Path) -> None:
    file = tmp_path / "serve.toml"
    file.write_text('[archive]\nurl = "archive"\n\n[serve]\nworkers = 2\naccess_log = false\n')
    config = load_archive_config(file)
    assert config.archive.url == str((tmp_path / "archive").resolve())
    assert (config.serve.workers, config.serve.access_log) == (2, False)
    assert config.path == file
    with pytest.raises(ConfigError, match=r"\[source\] section is required"):
        load_config(file)  # the archiver still needs its source


def test_other_sections_are_not_interpolated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DESWM_TEST_DB_PASSWORD", raising=False)
    file = tmp_path / "deswm.toml"
    file.write_text(
        '[source]\nurl = "postgresql://u:${DESWM_TEST_DB_PASSWORD}@db/x"\ntable = "files"\n\n'
        '[archive]\nurl = "s3://bucket/des"\n'
    )
    assert load_archive_config(file).archive.url == "s3://bucket/des"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[serve]\nport = 8080\n", "archive"),
        ('[archive]\nurl = "a"\n[sevre]\nport = 1\n', "sevre"),
        ('[archive]\nurl = "a"\n[serve]\nworkers = 0\n', "serve.workers"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    file = tmp_path / "serve.toml"
    file.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_archive_config(file)
    assert caught.value.key == key
