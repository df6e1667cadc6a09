"""Config files: parsing, interpolation, validation errors that name the key, building."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
import sqlalchemy as sa

from deswm._config import Config, load_config, parse_size
from deswm._errors import ConfigError
from deswm._orchestrator import WatermarkOrchestrator
from deswm._sources.sql import SqlSourceProvider
from deswm._sql.replica import SqlReplicaLagProbe
from deswm._stores.audit import SqlAuditLog
from deswm._stores.sql import SqlWatermarkStore

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


def test_closing_a_built_orchestrator_disposes_the_engines_it_built(tmp_path: Path) -> None:
    """A service that builds an orchestrator per job keeps no pools behind: ``close()``
    disposes the source, watermark, replica probe and audit engines the config made."""
    text = MINIMAL.replace(
        'url = "sqlite:///source.db"',
        'url = "sqlite:///source.db"\n'
        'replica_url = "postgresql+psycopg://reader@replica.invalid/files"',
    )
    text += '[watermark]\nurl = "sqlite:///marks.db"\n\n[audit]\nurl = "sqlite:///audit.db"\n'
    orchestrator = load_config(write(tmp_path, text)).build_orchestrator()
    source, store, audit = orchestrator.source, orchestrator.store, orchestrator.audit_log
    assert isinstance(source, SqlSourceProvider) and isinstance(store, SqlWatermarkStore)
    assert isinstance(audit, SqlAuditLog)
    assert source.throttle is not None
    probe = source.throttle.lag_probe
    assert isinstance(probe, SqlReplicaLagProbe)
    engines = {
        "source": source.engine,
        "watermark": store._engine,
        "replica": probe.engine,
        "audit": audit._engine,
    }
    assert len({id(e) for e in engines.values()}) == 4
    with engines["source"].connect():
        pass  # a pooled connection, checked in
    pools = {name: engine.pool for name, engine in engines.items()}
    source_pool = pools["source"]
    assert isinstance(source_pool, sa.pool.QueuePool)
    assert source_pool.checkedin() == 1
    with orchestrator:
        pass
    assert {n for n, e in engines.items() if e.pool is pools[n]} == set()  # all disposed
    assert source_pool.checkedin() == 0
    orchestrator.close()  # twice is harmless


def test_an_audit_log_passed_as_an_override_stays_open(tmp_path: Path) -> None:
    text = MINIMAL + '[audit]\nurl = "sqlite:///audit.db"\n'
    config = load_config(write(tmp_path, text))
    own = SqlAuditLog(f"sqlite:///{tmp_path / 'own.db'}", config.build_router())
    pool = own._engine.pool
    with config.build_orchestrator(audit_log=own) as orchestrator:
        assert orchestrator.audit_log is own
    assert own._engine.pool is pool  # the caller's, not disposed
    own.close()


def test_closing_an_orchestrator_leaves_a_passed_engine_alone(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    engine = sa.create_engine(config.source.url)
    built = config.build_orchestrator()
    host = WatermarkOrchestrator(
        built.store,
        config.build_source(engine),
        built.reader,
        built.router,
        built.packer,
        pipeline="host",
    )
    pool = engine.pool
    host.close()
    assert engine.pool is pool
    built.close()
    engine.dispose()


def test_custom_provider_class(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        'url = "sqlite:///source.db"',
        'url = "sqlite:///source.db"\nprovider = "deswm._sources.sql:SqlSourceProvider"',
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
    from deswm._stores.legacy import LegacyArchiveConfigStore
    from deswm._stores.objectstore import ObjectStoreWatermarkStore
    from deswm._stores.sql import SqlWatermarkStore

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


# --- values that used to crash (issue 18, item 5) -----------------------------------------


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        ("[watermark]\nlag_days = 100000000", "watermark.lag_days", "from 0 to 36500"),
        ("[watermark]\nlag_days = inf", "watermark.lag_days", "finite"),
        ("[watermark]\nlag_days = nan", "watermark.lag_days", "finite"),
        ("[watermark]\nlag_days = -inf", "watermark.lag_days", "finite"),
        ('[watermark]\nlag_days = "1e400"', "watermark.lag_days", "finite"),
        ("[run]\ninterval = inf", "run.interval", "finite"),
        ("[run]\ninterval = nan", "run.interval", "finite"),
        ("[run]\nmax_failure_ratio = nan", "run.max_failure_ratio", "finite"),
        ("[run]\nmax_buckets = 0", "run.max_buckets", "at least 1"),
        ("[flag]\nmax_rows_per_second = inf", "flag.max_rows_per_second", "finite"),
        ("[flag]\nbatch_size = 9223372036854775807", "flag.batch_size", "from 1 to"),
        ("[source]\npage_size = 9223372036854775807", "source.page_size", "from 1 to"),
        ("[source]\nlock_timeout = nan", "source.lock_timeout", "finite"),
        ("[source]\nlock_timeout = -1", "source.lock_timeout", "zero or positive"),
        ("[source]\nstatement_timeout = 1e300", "source.statement_timeout", "from 0 to"),
        ("[watermark]\nstatement_timeout = inf", "watermark.statement_timeout", "finite"),
        ("[archive]\nn_bits = 99", "archive.n_bits", "from 4 to 16"),
        ("[archive]\nworkers = 100000000", "archive.workers", "from 1 to"),
        ("[archive]\ncompression_level = 1000", "archive.compression_level", "to 22"),
        ('[archive]\nmax_shard_size = "1e400 GiB"', "archive.max_shard_size", "not a size"),
        (f'[archive]\nmax_shard_size = "{"9" * 400} GiB"', "archive.max_shard_size", "too large"),
        ("[archive]\nmax_shard_size = 9223372036854775807", "archive.max_shard_size", "too large"),
        ("[files]\nmax_workers = 0", "files.max_workers", "at least 1"),
        ("[files]\nretries = 1000000", "files.retries", "from 0 to 100"),
        ('[source]\nurl = "${"', "source.url", "malformed environment reference"),
        ('[source]\nurl = "sqlite:///${DB"', "source.url", "malformed environment reference"),
        ('[source]\ntable = "a${b"', "source.table", "malformed environment reference"),
    ],
)
def test_values_that_crashed_are_config_errors(
    tmp_path: Path, extra: str, key: str, fragment: str
) -> None:
    section = extra.split("\n", 1)[0]
    text = MINIMAL if section in MINIMAL else MINIMAL + "\n" + section + "\n"
    text = text.replace(section, extra)
    if 'url = "${' in extra or 'url = "sqlite:///${' in extra:
        text = text.replace('url = "sqlite:///source.db"\n', "", 1)
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text)).lag  # noqa: B018 - building the lag crashed
    assert caught.value.key == key
    assert fragment in str(caught.value)


def test_a_literal_dollar_brace_is_written_twice(tmp_path: Path) -> None:
    text = MINIMAL.replace("[archive]", '[watermark]\npipeline = "a$${b}"\n\n[archive]')
    assert load_config(write(tmp_path, text)).pipeline == "a${b}"


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("source:\n  url: sqlite:///s.db\n  1: 2\narchive:\n  url: a\n", "source.1"),
        ("source:\n  url: sqlite:///s.db\narchive:\n  url: a\n1: 2\n", "1"),
        ("source:\n  url: sqlite:///s.db\narchive:\n  url: a\n  true: 2\n", "archive.True"),
    ],
)
def test_yaml_keys_that_are_not_strings(tmp_path: Path, yaml_text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, yaml_text, "deswm.yaml"))
    assert caught.value.key == key
    assert "must be strings" in str(caught.value)


@pytest.mark.parametrize(
    "extra",
    ["[watermark]\nlag_days = 100000000", "[watermark]\nlag_days = nan", '[source]\nurl = "${"'],
)
def test_cli_exits_2_without_a_traceback(
    tmp_path: Path, extra: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from deswm.cli import main

    section = extra.split("\n", 1)[0]
    text = MINIMAL if section in MINIMAL else MINIMAL + "\n" + section + "\n"
    text = text.replace(section, extra)
    if 'url = "${' in extra:
        text = text.replace('url = "sqlite:///source.db"\n', "", 1)
    assert main(["stats", "-c", str(write(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err
    assert "Traceback" not in err


# --- every key named in a message exists (issue 18, item 7) -------------------------------


def test_spill_dir_is_a_setting_passed_to_the_packer(tmp_path: Path) -> None:
    (tmp_path / "spill").mkdir()
    text = MINIMAL.replace('url = "archive"', 'url = "archive"\nspill_dir = "spill"')
    config = load_config(write(tmp_path, text))
    assert config.archive.spill_dir == str(tmp_path / "spill")
    assert config.build_packer()._settings.spill_dir == str(tmp_path / "spill")


_SETTING = re.compile(
    r"(?<![\w./])(source|files|watermark|archive|run|flag)\.([A-Za-z_]\w*)(?![\w(])"
)
_ROOT = Path(__file__).resolve().parent.parent


def _message_strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """String parts of exception arguments and of ``key=``/``hint=`` keywords."""

    def parts(node: ast.AST) -> Iterator[tuple[int, str]]:
        for inner in ast.walk(node):
            if isinstance(inner, ast.Constant) and isinstance(inner.value, str):
                yield inner.lineno, inner.value

    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            yield from parts(node.exc)
        elif isinstance(node, ast.keyword) and node.arg in ("key", "hint"):
            yield from parts(node.value)


def _unknown_settings(text: str) -> list[str]:
    from deswm._config import _SECTIONS

    found = []
    for match in _SETTING.finditer(text):
        section, name = match.groups()
        if name not in attrs.fields_dict(_SECTIONS[section]):
            found.append(match.group(0))
    return found


def test_every_setting_named_in_an_error_exists() -> None:
    unknown: set[str] = set()
    for path in sorted((_ROOT / "src" / "deswm").rglob("*.py")):
        for line, text in _message_strings(ast.parse(path.read_text(encoding="utf-8"))):
            unknown.update(f"{path.name}:{line}: {name}" for name in _unknown_settings(text))
    assert not unknown, f"messages name settings the config loader rejects: {unknown}"


def test_every_setting_named_in_the_docs_exists() -> None:
    from deswm._checkpoints import POINTS

    unknown = []
    for path in sorted((_ROOT / "docs").glob("*.md")):
        for span in re.findall(r"`([^`\n]+)`", path.read_text(encoding="utf-8")):
            if span in POINTS or "unknown setting" in span:
                continue  # a checkpoint name; the example of an unknown-key error
            unknown += [f"{path.name}: {name}" for name in _unknown_settings(span)]
    assert not unknown, f"docs name settings the config loader rejects: {unknown}"


# --- component errors name the setting, defaults are stated once ----------------------------


@pytest.mark.parametrize(
    ("section", "setting", "key"),
    [
        ("watermark", 'table = "   "', "watermark.table"),
        ("watermark", 'schema = "   "', "watermark.schema"),
        ("watermark", 'kind = "legacy"\ntable = "   "', "watermark.table"),
        ("run", 'error_table = "   "', "run.error_table"),
    ],
)
def test_a_bad_value_that_a_component_refuses_names_the_setting(
    tmp_path: Path, section: str, setting: str, key: str
) -> None:
    config = load_config(write(tmp_path, f"{MINIMAL}\n[{section}]\n{setting}\n"))
    engine = sa.create_engine("sqlite://")
    build = config.build_error_store if section == "run" else config.build_store
    with pytest.raises(ConfigError) as caught:
        build(engine)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: must be a non-empty")


def test_reader_errors_name_the_files_settings(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    # Past the loader's own range check, as a host building settings in Python could be.
    unchecked = attrs.evolve(config, files=attrs.evolve(config.files, max_workers=0))
    with pytest.raises(ConfigError) as caught:
        unchecked.build_reader()
    assert caught.value.key == "files.max_workers"


def _default(callable_: object, name: str) -> object:
    return inspect.signature(callable_).parameters[name].default  # type: ignore[arg-type]


def test_config_defaults_are_the_constructor_defaults() -> None:
    from deswm._config import (
        ArchiveSettings,
        FilesSettings,
        FlagSettings,
        RunSettings,
        SourceSettings,
        WatermarkSettings,
    )
    from deswm._flagging import FlagJob
    from deswm._packer import DesPacker
    from deswm._readers import FsspecFileReader
    from deswm._routing import DesRouter
    from deswm._sources.sql import SqlSourceProvider
    from deswm._stores.error_store import SqlErrorStore
    from deswm._stores.legacy import LegacyArchiveConfigStore

    def setting(section: type, name: str) -> object:
        return attrs.fields_dict(section)[name].default

    pairs: list[tuple[type, str, object, str]] = [
        (SourceSettings, "uid_column", SqlSourceProvider, "uid_column"),
        (SourceSettings, "created_at_column", SqlSourceProvider, "created_at_column"),
        (SourceSettings, "location_column", SqlSourceProvider, "location_column"),
        (SourceSettings, "size_column", SqlSourceProvider, "size_column"),
        (SourceSettings, "page_size", SqlSourceProvider, "page_size"),
        (FilesSettings, "max_workers", FsspecFileReader, "max_workers"),
        (FilesSettings, "retries", FsspecFileReader, "retries"),
        (WatermarkSettings, "row_id", LegacyArchiveConfigStore, "row_id"),
        (ArchiveSettings, "n_bits", DesRouter, "n_bits"),
        (ArchiveSettings, "compression", DesPacker, "compression"),
        (ArchiveSettings, "compression_level", DesPacker, "compression_level"),
        (ArchiveSettings, "max_shard_size", DesPacker, "max_shard_size"),
        (ArchiveSettings, "big_file_threshold", DesPacker, "big_file_threshold"),
        (ArchiveSettings, "spill_threshold", DesPacker, "spill_threshold"),
        (ArchiveSettings, "spill_dir", DesPacker, "spill_dir"),
        (ArchiveSettings, "workers", DesPacker, "workers"),
        (FlagSettings, "column", FlagJob, "column"),
        (FlagSettings, "value", FlagJob, "value"),
        (FlagSettings, "batch_size", FlagJob, "batch_size"),
        (FlagSettings, "max_rows_per_second", FlagJob, "max_rows_per_second"),
        (RunSettings, "on_error", WatermarkOrchestrator, "on_error"),
        (RunSettings, "max_failure_ratio", WatermarkOrchestrator, "max_failure_ratio"),
        (RunSettings, "max_buckets", WatermarkOrchestrator, "max_buckets"),
        (RunSettings, "error_table", SqlErrorStore, "table"),
    ]
    for section, name, component, argument in pairs:
        assert setting(section, name) == _default(component, argument), (section, name)
    lag = _default(WatermarkOrchestrator, "lag")
    assert timedelta(days=setting(WatermarkSettings, "lag_days")) == lag  # type: ignore[arg-type]
    from deswm._engines import create_engine

    for section in (SourceSettings, WatermarkSettings):
        assert setting(section, "lock_timeout") == _default(create_engine, "lock_timeout")
