"""Config files: parsing, interpolation, validation errors that name the key, building."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from deswm.config import Config, load_config, parse_size
from deswm.errors import ConfigError
from deswm.orchestrator import WatermarkOrchestrator

MINIMAL = """
[source]
url = "sqlite:///source.db"

[archive]
url = "archive"
"""


def write(tmp_path: Path, text: str, name: str = "deswm.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_file_gets_defaults_and_resolves_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.source.table == "files"
    assert config.pipeline == "files"
    assert config.lag == timedelta(days=7)
    assert config.archive.n_bits == 8
    assert config.archive.max_shard_size == 1024**3
    assert config.archive.url == str(tmp_path / "archive")
    assert config.source.url == f"sqlite:///{tmp_path / 'source.db'}"
    assert config.watermark_url == config.source.url
    assert config.initial is None


def test_yaml_is_read_by_extension(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "source:\n  url: sqlite:///s.db\n  table: uploads\narchive:\n  url: /tmp/a\n"
        "watermark:\n  lag_days: 3\n  initial: '2024-05-01'\n",
        "deswm.yaml",
    )
    config = load_config(path)
    assert config.source.table == "uploads"
    assert config.lag == timedelta(days=3)
    assert config.initial == datetime(2024, 5, 1, tzinfo=UTC)


def test_environment_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESWM_TEST_TABLE", "uploads")
    text = MINIMAL.replace(
        'url = "sqlite:///source.db"',
        'url = "sqlite:///source.db"\n'
        'table = "${DESWM_TEST_TABLE}"\nschema = "${DESWM_UNSET:-main}"',
    )
    config = load_config(write(tmp_path, text))
    assert config.source.table == "uploads"
    assert config.source.schema == "main"


def test_missing_environment_variable_names_key(tmp_path: Path) -> None:
    text = MINIMAL.replace('url = "archive"', 'url = "${DESWM_SURELY_UNSET_VAR}"')
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert caught.value.key == "archive.url"
    assert "DESWM_SURELY_UNSET_VAR" in str(caught.value)


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        ("[archive]\nbogus = 1", "archive.bogus", "unknown setting"),
        ("[nonsense]\nx = 1", "nonsense", "unknown section"),
        ('[watermark]\nlag_days = "soon"', "watermark.lag_days", "number"),
        ("[watermark]\nlag_days = -1", "watermark.lag_days", "positive"),
        ('[run]\non_error = "ignore"', "run.on_error", "one of"),
        ("[run]\npartitions = 2\npartition = 2", "run.partition", "partition"),
        ('[source]\ntimezone = "Mars/Olympus"', "source.timezone", "unknown timezone"),
        ("[source]\npage_size = 0", "source.page_size", "at least 1"),
        ('[watermark]\ninitial = "yesterday"', "watermark.initial", "ISO 8601"),
        ('[archive]\nmax_shard_size = "huge"', "archive.max_shard_size", "not a size"),
        ("[archive]\nn_bits = true", "archive.n_bits", "integer"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, extra: str, key: str, fragment: str) -> None:
    section = extra.split("\n", 1)[0]
    text = MINIMAL
    if section in text:
        text = text.replace(section, extra)
    else:
        text += "\n" + extra + "\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert caught.value.key == key
    assert fragment in str(caught.value)


def test_required_sections_and_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[archive\] section is required"):
        load_config(write(tmp_path, '[source]\nurl = "sqlite:///x.db"\n'))
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, '[source]\ntable = "t"\n[archive]\nurl = "a"\n'))
    assert caught.value.key == "source.url"


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[source\n"))
    with pytest.raises(ConfigError, match="unknown config file type"):
        load_config(write(tmp_path, MINIMAL, "deswm.ini"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1024, 1024), ("64MiB", 64 * 2**20), ("1GiB", 2**30), ("10 MB", 10**7), ("512", 512)],
)
def test_parse_size(value: int | str, expected: int) -> None:
    assert parse_size(value, "k") == expected


def test_builds_a_working_orchestrator(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + '\n[watermark]\npipeline = "p"\n'))
    orchestrator = config.build_orchestrator()
    assert isinstance(orchestrator, WatermarkOrchestrator)
    assert orchestrator.key.pipeline == "p"


def test_custom_provider_class(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        'url = "sqlite:///source.db"',
        'url = "sqlite:///source.db"\nprovider = "deswm.sources.sql:SqlSourceProvider"',
    )
    assert load_config(write(tmp_path, text)).source.provider
    bad = MINIMAL.replace(
        'url = "sqlite:///source.db"', 'url = "sqlite:///source.db"\nprovider = "json:loads"'
    )
    config = load_config(write(tmp_path, bad))
    with pytest.raises(ConfigError) as caught:
        config.build_orchestrator()
    assert caught.value.key == "source.provider"


def test_missing_driver_points_at_the_extra(tmp_path: Path) -> None:
    text = MINIMAL.replace("sqlite:///source.db", "oracle+nosuchdriver://u:secret@h/db")
    config = load_config(write(tmp_path, text))
    with pytest.raises(ConfigError) as caught:
        config.build_orchestrator()
    assert caught.value.key == "source.url"
    assert "secret" not in str(caught.value)


def test_from_mapping_without_a_file() -> None:
    config = Config.from_mapping({"source": {"url": "sqlite://"}, "archive": {"url": "memory://a"}})
    assert config.path is None
    assert config.archive.url == "memory://a"


def test_watermark_kinds_build_their_stores(tmp_path: Path) -> None:
    from deswm.stores.legacy import LegacyArchiveConfigStore
    from deswm.stores.objectstore import ObjectStoreWatermarkStore
    from deswm.stores.sql import SqlWatermarkStore

    sql = load_config(write(tmp_path, MINIMAL)).build_orchestrator()
    assert isinstance(sql.store, SqlWatermarkStore)

    legacy = load_config(write(tmp_path, MINIMAL + '[watermark]\nkind = "legacy"\nrow_id = 3\n'))
    store = legacy.build_orchestrator().store
    assert isinstance(store, LegacyArchiveConfigStore)
    assert store.row_id == 3

    text = MINIMAL + '[watermark]\nkind = "object"\nurl = "marks"\n'
    objects = load_config(write(tmp_path, text))
    assert objects.watermark.url == str(tmp_path / "marks")
    orchestrator = objects.build_orchestrator()
    assert isinstance(orchestrator.store, ObjectStoreWatermarkStore)
    engine = sa.create_engine(objects.source.url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE files (uid TEXT, created_at DATETIME, file_location TEXT,"
                " size_bytes INTEGER)"
            )
        )
    engine.dispose()
    orchestrator.run_cycle()  # an empty table: one write, in the object store
    assert list((tmp_path / "marks").rglob("*.json"))


def test_watermark_kind_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMAL + '[watermark]\nkind = "object"\n'))
    assert caught.value.key == "watermark.url"
    text = MINIMAL + '[watermark]\nkind = "legacy"\n[run]\npartitions = 2\n'
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert caught.value.key == "watermark.kind"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMAL + '[watermark]\nkind = "redis"\n'))
    assert caught.value.key == "watermark.kind"


def test_allowed_roots_resolve_like_root_and_reach_the_reader(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            MINIMAL + '[files]\nallowed_roots = ["volume-a", "/mnt/b", "s3://bucket/files"]\n',
        )
    )
    assert config.files.root is None
    assert config.files.allowed_roots == (str(tmp_path / "volume-a"), "/mnt/b", "s3://bucket/files")
    reader = config.build_reader()
    assert reader.roots == config.files.allowed_roots
    assert load_config(write(tmp_path, MINIMAL)).files.allowed_roots == ()
