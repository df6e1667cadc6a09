"""The deswm command, in process and (for the README's demo and signals) as a subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from deswm._demo import run_demo
from deswm.cli import main


def deswm_script() -> str:
    """The installed console script (tests the entry point, not just the module)."""
    found = Path(sys.executable).parent / "deswm"
    return str(found) if found.exists() else shutil.which("deswm") or "deswm"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("demo")
    run_demo(directory, files=300, echo=lambda _: None)
    return directory


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_readme_demo_command_on_a_clean_folder(tmp_path: Path) -> None:
    folder = tmp_path / "fresh"
    done = subprocess.run(
        [deswm_script(), "demo", "--dir", str(folder), "--files", "200"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "identical" in done.stdout
    assert "deswm stats -c" in done.stdout
    assert list((folder / "archive").glob("*.des"))
    again = subprocess.run(
        [deswm_script(), "demo", "--dir", str(folder), "--files", "200"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert "nothing new to archive" in again.stdout


def test_stats_json(demo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["stats", "-c", str(demo_dir / "deswm.toml"), "--json"], capsys)
    assert code == 0
    stats = json.loads(out)
    assert stats["pipeline"] == "demo"
    assert stats["watermark"] == stats["target"]
    assert stats["pending_files"] == 0
    assert stats["behind_seconds"] == 0


def test_watermark_get_json_has_the_documented_fields(
    demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["watermark", "get", "-c", str(demo_dir / "deswm.toml"), "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert {"pipeline", "stage", "partition", "position", "version"} <= set(data)
    assert data["position"].endswith("T00:00:00.000000Z")
    assert data["stage"] == "archived"


def test_adjust_replays_and_history_records_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_demo(tmp_path, files=150, echo=lambda _: None)
    config = str(tmp_path / "deswm.toml")
    objects = sorted(p.read_bytes() for p in (tmp_path / "archive").glob("*.des"))
    _, before, _ = run(["watermark", "get", "-c", config, "--json"], capsys)

    code, _, _ = run(
        ["watermark", "adjust", "-c", config, "--days-offset", "-2", "--reason", "replay test"],
        capsys,
    )
    assert code == 0
    code, out, _ = run(["watermark", "history", "-c", config, "--json"], capsys)
    history = json.loads(out)
    assert history[0]["reason"] == "replay test"
    code, out, _ = run(["run", "-c", config, "--json"], capsys)
    assert code == 0
    assert json.loads(out)["buckets_committed"] >= 1
    _, after, _ = run(["watermark", "get", "-c", config, "--json"], capsys)
    assert json.loads(after)["position"] == json.loads(before)["position"]
    assert sorted(p.read_bytes() for p in (tmp_path / "archive").glob("*.des")) == objects


def test_moving_forward_needs_force(demo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(demo_dir / "deswm.toml")
    code, _, err = run(["watermark", "adjust", "-c", config, "--days-offset", "3"], capsys)
    assert code == 2
    assert "--force" in err


def test_forward_refusal_names_the_positions_and_the_flag(
    demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(demo_dir / "deswm.toml")
    code, out, err = run(["watermark", "adjust", "-c", config, "--days-offset", "1"], capsys)
    assert code == 2
    assert out == ""
    assert "deswm: configuration error: --to: moving " in err
    assert "skips rows that may not be archived. pass --force if those rows" in err


def test_set_beyond_the_target_without_a_watermark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_demo(tmp_path, files=20, echo=lambda _: None)
    config_path = tmp_path / "deswm.toml"
    config_path.write_text(config_path.read_text().replace('pipeline = "', 'pipeline = "fresh-', 1))
    config = str(config_path)
    code, _, err = run(["watermark", "set", "-c", config, "--to", "2999-01-01"], capsys)
    assert code == 2
    assert "--to: 2999-01-01T00:00:00" in err
    assert "is beyond the target" in err
    assert "pass --force to set it anyway" in err
    code, out, err = run(
        ["watermark", "set", "-c", config, "--to", "2999-01-01", "--force"], capsys
    )
    assert code == 0, err
    assert "(unset) -> 2999-01-01T00:00:00" in out


def test_set_aligns_down_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_demo(tmp_path, files=20, echo=lambda _: None)
    config = str(tmp_path / "deswm.toml")
    code, out, err = run(
        ["watermark", "set", "-c", config, "--to", "2000-01-02T05:00:00Z", "--json"], capsys
    )
    assert code == 0, err
    assert "note: 2000-01-02T05:00:00" in err
    assert "aligned down to the bucket start 2000-01-02T00:00:00" in err
    assert json.loads(out)["position"].startswith("2000-01-02T00:00:00")
    code, out, _ = run(["watermark", "history", "-c", config, "--json"], capsys)
    assert json.loads(out)[0]["reason"] == "deswm watermark set"


def test_reset_returns_to_the_initial_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_demo(tmp_path, files=20, echo=lambda _: None)
    config = str(tmp_path / "deswm.toml")
    initial = next(
        line.split('"')[1]
        for line in (tmp_path / "deswm.toml").read_text().splitlines()
        if line.startswith("initial")
    )
    code, out, err = run(["watermark", "reset", "-c", config, "--reason", "again"], capsys)
    # The demo's watermark is past its initial position, so reset moves back.
    assert code == 0, err
    assert f"-> {initial}T00:00:00" in out
    code, out, _ = run(["watermark", "history", "-c", config, "--json"], capsys)
    assert json.loads(out)[0]["reason"] == "again"


def test_get_writes_the_file(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = sa.create_engine(f"sqlite:///{demo_dir / 'source.sqlite3'}")
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT uid, created_at, file_location FROM files ORDER BY created_at LIMIT 1")
        ).one()
    engine.dispose()
    created = str(row.created_at).replace(" ", "T") + "Z"
    out_file = tmp_path / "out.bin"
    code, _, _ = run(
        [
            "get",
            "-c",
            str(demo_dir / "deswm.toml"),
            row.uid,
            "--created-at",
            created,
            "-o",
            str(out_file),
        ],
        capsys,
    )
    assert code == 0
    assert out_file.read_bytes() == (demo_dir / row.file_location).read_bytes()


def test_get_unknown_uid_exits_1(demo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        ["get", "-c", str(demo_dir / "deswm.toml"), "no-such-uid", "--created-at", "2020-01-01"],
        capsys,
    )
    assert code == 1
    assert "NotArchivedError" in err


def test_verify_passes_then_finds_a_missing_shard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_demo(tmp_path, files=120, echo=lambda _: None)
    config = str(tmp_path / "deswm.toml")
    code, out, _ = run(["verify", "-c", config, "--deep"], capsys)
    assert code == 0, out
    assert "0 missing, 0 corrupt" in out
    victim = sorted((tmp_path / "archive").glob("*.des"))[0]
    victim.unlink()
    code, out, _ = run(["verify", "-c", config, "--json"], capsys)
    assert code == 1
    assert json.loads(out)["missing_count"] > 0


def test_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_demo(tmp_path, files=100, echo=lambda _: None)
    config = str(tmp_path / "deswm.toml")
    run(["watermark", "adjust", "-c", config, "--days-offset", "-3"], capsys)
    listing = sorted(os.listdir(tmp_path / "archive"))
    code, out, _ = run(["run", "-c", config, "--dry-run", "--json"], capsys)
    assert code == 0
    plan = json.loads(out)
    assert plan["pending_files"] > 0
    assert sorted(os.listdir(tmp_path / "archive")) == listing


def test_config_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[source]\nurl = "sqlite:///x.db"\n[archive]\nurl = "a"\nn_bits = 99\n')
    code, _, err = run(["stats", "-c", str(bad)], capsys)
    assert code == 2
    assert "archive.n_bits" in err
    code, _, err = run(["stats"], capsys)
    assert code == 2
    with pytest.raises(SystemExit) as caught:
        main(["run", "--bogus"])
    assert caught.value.code == 2


def test_password_is_never_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[source]\nurl = "postgresql+psycopg://user:hunter2@127.0.0.1:1/nope"\n'
        '[archive]\nurl = "a"\n'
    )
    code, out, err = run(["stats", "-c", str(config)], capsys)
    assert code != 0
    assert "hunter2" not in out + err


def test_run_interval_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    run_demo(tmp_path, files=100, echo=lambda _: None)
    process = subprocess.Popen(
        [deswm_script(), "run", "-c", str(tmp_path / "deswm.toml"), "--interval", "3600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        # The first cycle's log line proves the signal handlers are installed.
        for line in process.stderr:
            if "cycle done" in line:
                break
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 0


def test_demo_dates_follow_the_clock(tmp_path: Path) -> None:
    now = datetime(2024, 3, 10, 15, tzinfo=UTC)
    report = run_demo(tmp_path, files=80, echo=lambda _: None, now=now)
    assert report.result.watermark_after == datetime(2024, 3, 3, tzinfo=UTC)
    assert report.checked_created_at is not None
    assert report.checked_created_at < report.result.watermark_after
    assert report.result.window.end - report.result.window.start == timedelta(days=8)


def test_errors_list_and_retry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime(2024, 3, 10, 15, tzinfo=UTC)
    run_demo(tmp_path, files=1, echo=lambda _: None, now=now)  # creates config and source
    config_path = tmp_path / "deswm.toml"
    text = config_path.read_text()
    config_path.write_text(text + '\n[run]\non_error = "record"\nmax_failure_ratio = 0.5\n')
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'source.sqlite3'}")
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM files"))
        for number in range(4):
            name = f"r{number}.txt"
            (tmp_path / name).write_bytes(b"x" * number)
            conn.execute(
                sa.text("INSERT INTO files VALUES (:u, :c, :l, :s)"),
                {"u": name, "c": "2024-03-01 10:00:00.000000", "l": name, "s": number},
            )
    engine.dispose()
    (tmp_path / "r3.txt").rename(tmp_path / "away.txt")
    config = str(config_path)
    code, _, err = run(["watermark", "set", "-c", config, "--to", "2024-03-01"], capsys)
    assert code == 0, err
    code, out, err = run(["run", "-c", config, "--json"], capsys)
    assert code == 0, err
    assert [f["uid"] for f in json.loads(out)["failures"]] == ["r3.txt"]

    code, out, _ = run(["errors", "list", "-c", config, "--json"], capsys)
    listed = json.loads(out)
    assert [e["failure"]["uid"] for e in listed] == ["r3.txt"]
    assert listed[0]["attempts"] == 1

    code, out, _ = run(["errors", "retry", "-c", config], capsys)
    assert code == 1  # still failing
    assert "still failing" in out
    (tmp_path / "away.txt").rename(tmp_path / "r3.txt")
    code, out, _ = run(["errors", "retry", "-c", config], capsys)
    assert code == 0, out
    assert "1 archived" in out
    code, out, _ = run(["errors", "list", "-c", config], capsys)
    assert "no recorded failures" in out


# --- read commands only read (issue 18 item 8, issue 15) ------------------------------------

READ_COMMANDS = [
    ["stats"],
    ["run", "--dry-run"],
    ["verify"],
    ["watermark", "get"],
    ["watermark", "list"],
    ["watermark", "history"],
    ["errors", "list"],
]


def _read_config(tmp_path: Path, source_url: str, watermark_url: str | None = None) -> Path:
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    watermark = f"url = {json.dumps(watermark_url)}\n" if watermark_url else ""
    config = tmp_path / "deswm.toml"
    config.write_text(
        f"[source]\nurl = {json.dumps(source_url)}\n"
        f"[files]\nroot = {json.dumps(str(files))}\n"
        f'[watermark]\n{watermark}pipeline = "reads"\ninitial = "2024-05-01"\n'
        f"[archive]\nurl = {json.dumps(str(tmp_path / 'archive'))}\n"
    )
    return config


def _files_table(engine: sa.Engine) -> None:
    metadata = sa.MetaData()
    sa.Table(
        "files",
        metadata,
        sa.Column("uid", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("file_location", sa.String(500), nullable=False),
        sa.Column("size_bytes", sa.BigInteger),
    )
    metadata.create_all(engine)


def _tables(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def test_read_commands_do_not_create_a_mistyped_sqlite_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "flies.db"
    config = _read_config(tmp_path, f"sqlite:///{typo}")
    for command in READ_COMMANDS:
        code, _out, err = run([*command, "-c", str(config)], capsys)
        assert code == 2, (command, err)
        assert "source.url" in err and "does not exist" in err, err
        assert not typo.exists(), command


def test_read_commands_run_no_ddl_on_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source.db"
    own = tmp_path / "deswm.db"
    source_engine = sa.create_engine(f"sqlite:///{source}")
    _files_table(source_engine)
    own_engine = sa.create_engine(f"sqlite:///{own}")
    with own_engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE unrelated (x INTEGER)")
    config = _read_config(tmp_path, f"sqlite:///{source}", f"sqlite:///{own}")
    outputs = {}
    for command in READ_COMMANDS:
        code, out, err = run([*command, "-c", str(config)], capsys)
        outputs[" ".join(command)] = (code, out, err)
        assert code == (1 if command == ["watermark", "get"] else 0), (command, out, err)
    assert _tables(own_engine) == {"unrelated"}
    assert _tables(source_engine) == {"files"}
    code, out, _ = outputs["watermark get"]
    assert "pipeline 'reads' has no watermark" in out
    assert "the first `deswm run` creates it" in out
    assert "not initialised yet" in outputs["errors list"][1]
    assert "not initialised yet" in outputs["watermark list"][1]
    assert "not initialised yet" in outputs["stats"][1]
    source_engine.dispose()
    own_engine.dispose()


def test_watermark_get_of_an_unknown_pipeline_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source.db"
    engine = sa.create_engine(f"sqlite:///{source}")
    _files_table(engine)
    config = _read_config(tmp_path, f"sqlite:///{source}")
    assert main(["run", "-c", str(config)]) == 0  # creates the tables, one watermark
    capsys.readouterr()
    other = tmp_path / "other.toml"
    other.write_text(config.read_text().replace('pipeline = "reads"', 'pipeline = "unknown"'))
    code, out, _ = run(["watermark", "get", "-c", str(other)], capsys)
    assert code == 1
    assert "pipeline 'unknown' has no watermark" in out
    code, out, _ = run(["watermark", "get", "--json", "-c", str(other)], capsys)
    assert code == 1
    assert json.loads(out)["position"] is None
    code, out, _ = run(["watermark", "list", "--all", "--json", "-c", str(other)], capsys)
    assert [mark["pipeline"] for mark in json.loads(out)] == ["reads"]
    engine.dispose()


def test_a_read_only_postgres_role_runs_every_read_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import uuid

    from conftest import postgres_schema, postgres_url

    with postgres_url() as url:
        admin = sa.create_engine(url, poolclass=sa.pool.NullPool)
        _files_table(admin)
        schema = postgres_schema(url)
        role = f"deswm_ro_{uuid.uuid4().hex[:8]}"
        database = admin.url.database
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
            conn.exec_driver_sql(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"')
            conn.exec_driver_sql(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
            conn.exec_driver_sql(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
        try:
            reader_url = sa.make_url(url).set(username=role).render_as_string(hide_password=False)
            config = _read_config(tmp_path, reader_url)
            for command in READ_COMMANDS:
                code, out, err = run([*command, "-c", str(config)], capsys)
                assert code == (1 if command == ["watermark", "get"] else 0), (command, out, err)
                assert "Error" not in err, (command, err)
            assert _tables(admin) == {"files"}
            code, out, err = run(["errors", "list", "-c", str(config)], capsys)
            assert "the error table is not initialised yet" in out
        finally:
            with admin.begin() as conn:
                conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
                conn.exec_driver_sql(f'DROP ROLE "{role}"')
            admin.dispose()


def test_entries_without_checksums_need_allow_unverified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Shards of another DES writer (no meta): get refuses unless asked, verify --deep
    reports them apart from corrupt ones."""
    import io

    from deswm._container import ShardWriter, read_shard

    run_demo(tmp_path, files=120, echo=lambda _: None)
    config = str(tmp_path / "deswm.toml")
    for part in (tmp_path / "archive").glob("*.des"):
        data = part.read_bytes()
        buffer = io.BytesIO()
        writer = ShardWriter(buffer)
        for entry in read_shard(data).entries:
            stored = data[entry.offset : entry.offset + entry.length]
            writer.add(entry.uid, stored, codec=entry.codec, size=entry.size)
        writer.finish()
        part.write_bytes(buffer.getvalue())
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'source.sqlite3'}")
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT uid, created_at, file_location FROM files ORDER BY created_at LIMIT 1")
        ).one()
    engine.dispose()
    get = ["get", "-c", config, row.uid, "--created-at", str(row.created_at).replace(" ", "T")]
    code, out, err = run(get, capsys)
    assert code == 1
    assert out == ""
    assert "no checksum" in err and "--allow-unverified" in err
    code, _, err = run([*get, "-o", str(tmp_path / "out.bin"), "--allow-unverified"], capsys)
    assert code == 0
    assert "unverified" in err
    assert (tmp_path / "out.bin").read_bytes() == (tmp_path / row.file_location).read_bytes()
    code, out, _ = run(["verify", "-c", config, "--deep"], capsys)
    assert code == 0, out
    checked = int(out.split()[1])
    assert checked > 0
    assert "0 missing, 0 corrupt" in out
    assert f"\n{checked} unverified (no checksum" in out
    code, out, _ = run(["verify", "-c", config, "--deep", "--json"], capsys)
    assert json.loads(out)["unverified_count"] == checked


# --- ergonomics (issue 11, item 4): the real process ------------------------------------------


def _module_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _deswm(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m deswm ARGS``; with ``code``, that code runs first in the process."""
    if code is None:
        command = [sys.executable, "-m", "deswm", *args]
    else:
        run_main = "import sys; from deswm.cli import main; sys.exit(main(sys.argv[1:]))"
        command = [sys.executable, "-c", f"{code}\n{run_main}", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=_module_env(), check=False
    )


@pytest.mark.parametrize(
    "args",
    [
        ["stats", "-c", "{config}", "-v"],
        ["-v", "stats", "-c", "{config}"],
        ["stats", "-q", "-c", "{config}"],
        ["stats", "-c", "{config}", "--json", "--debug"],
    ],
)
def test_verbosity_flags_work_before_and_after_the_command(demo_dir: Path, args: list[str]) -> None:
    config = str(demo_dir / "deswm.toml")
    done = _deswm(*(a.format(config=config) for a in args))
    assert done.returncode == 0, done.stderr
    assert "demo" in done.stdout and "watermark" in done.stdout


def test_a_flag_before_the_command_is_not_reset_by_the_command() -> None:
    from deswm.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["-v", "stats"]).verbose
    assert parser.parse_args(["stats", "-v"]).verbose
    assert parser.parse_args(["--debug", "run", "-q"]).debug
    assert not parser.parse_args(["stats"]).verbose


def test_a_closed_stdout_ends_quietly_with_141(demo_dir: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "deswm", "stats", "-c", str(demo_dir / "deswm.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_module_env(),
    )
    assert process.stdout is not None
    process.stdout.close()  # like `| head` that has read enough before deswm writes
    _, err = process.communicate(timeout=120)
    assert process.returncode == 141, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_a_missing_prometheus_client_names_the_extra(demo_dir: Path) -> None:
    done = _deswm(
        "run",
        "-c",
        str(demo_dir / "deswm.toml"),
        "--metrics-port",
        "0",
        code="import sys; sys.modules['prometheus_client'] = None",
    )
    assert done.returncode == 2
    assert "pip install 'deswm[prometheus]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_missing_extra_is_a_typed_error() -> None:
    from deswm._errors import ConfigError, MissingExtraError
    from deswm._extras import require

    with pytest.raises(MissingExtraError) as caught:
        require("deswm_no_such_module.sub", extra="nope", feature="A test")
    assert isinstance(caught.value, ConfigError)
    assert (caught.value.module, caught.value.extra) == ("deswm_no_such_module", "nope")
    assert caught.value.hint == "pip install 'deswm[nope]'"


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_prints_a_script(shell: str) -> None:
    done = _deswm("completion", shell)
    assert done.returncode == 0, done.stderr
    assert "deswm" in done.stdout and "--max-buckets" in done.stdout


def test_completion_without_shtab_names_the_extra() -> None:
    done = _deswm("completion", "bash", code="import sys; sys.modules['shtab'] = None")
    assert done.returncode == 2
    assert "pip install 'deswm[completion]'" in done.stderr


def test_errors_are_one_line_unless_debug(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    plain = _deswm("stats", "-c", missing)
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [
        f"deswm: configuration error: config file {missing!r} does not exist. pass -c PATH"
    ]
    debug = _deswm("stats", "-c", missing, "--debug")
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()


def test_an_unexpected_error_is_one_line_with_a_hint(demo_dir: Path) -> None:
    code = (
        "import deswm.cli\n"
        "def boom(args): raise OSError(28, 'No space left on device')\n"
        "deswm.cli.cmd_stats = boom"
    )
    done = _deswm("stats", "-c", str(demo_dir / "deswm.toml"), code=code)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "unexpected OSError" in done.stderr and "--debug" in done.stderr


@pytest.mark.parametrize(("given", "expected"), [([], 7.0), (["45"], 45.0)])
def test_interval_without_a_value_reads_run_interval(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    given: list[str],
    expected: float,
) -> None:
    from deswm._orchestrator import WatermarkOrchestrator

    run_demo(tmp_path, files=10, echo=lambda _: None)
    config = tmp_path / "deswm.toml"
    config.write_text(config.read_text() + "\n[run]\ninterval = 7\n")
    asked: list[float] = []

    def run_forever(self: WatermarkOrchestrator, interval: float, **_: object) -> str:
        asked.append(interval)
        return "signal"

    monkeypatch.setattr(WatermarkOrchestrator, "run_forever", run_forever)
    code, out, _ = run(["run", "-c", str(config), "--interval", *given], capsys)
    assert (code, asked) == (0, [expected])
    assert "stopped:" in out


def test_version_says_whether_the_c_helper_is_built(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Operators comparing throughput across machines can tell which read path ran."""
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    built = importlib.util.find_spec("deswm._native") is not None
    assert (
        capsys.readouterr()
        .out.strip()
        .endswith("(C helper: built)" if built else "(C helper: not built)")
    )
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip().endswith("(C helper: not built)")
