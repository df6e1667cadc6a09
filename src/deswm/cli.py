"""The ``deswm`` command: run cycles, see stats, steer the watermark, read files back.

Exit codes: 0 success, 1 a failure at run time (failed files, conflicts, missing
entries), 2 a usage or configuration error. Output is text for people, or JSON with
``--json``. Passwords in URLs are never printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from deswm._redact import redact
from deswm.config import Config, load_config
from deswm.errors import (
    ConfigError,
    CycleError,
    DeswmError,
    UnplaceableRowError,
    WatermarkMoveRefused,
)
from deswm.model import CyclePlan, Watermark, WatermarkMove, Window
from deswm.timeutil import format_utc, parse_timestamp

if TYPE_CHECKING:
    from deswm.orchestrator import WatermarkOrchestrator

__all__ = ["main"]

log = logging.getLogger("deswm.cli")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deswm")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


# --- output helpers ---------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """Value types, datetimes and durations as JSON-friendly values (UTC ISO, seconds)."""
    if attrs.has(type(value)):
        return {k: to_jsonable(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, datetime):
        return format_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def _print_json(value: Any) -> None:
    print(redact(json.dumps(to_jsonable(value), indent=2, sort_keys=True)))


def _watermark_dict(watermark: Watermark) -> dict[str, Any]:
    return {
        "pipeline": watermark.key.pipeline,
        "stage": watermark.key.stage,
        "partition": watermark.key.partition,
        "position": format_utc(watermark.position),
        "version": watermark.version,
        "partitions": watermark.partitions,
        "lag_seconds": watermark.lag.total_seconds() if watermark.lag is not None else None,
        "updated_at": format_utc(watermark.updated_at) if watermark.updated_at else None,
        "updated_by": watermark.updated_by,
    }


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{count} B"
        size /= 1024
    return f"{count} B"  # pragma: no cover


def _plan_dict(plan: CyclePlan) -> dict[str, Any]:
    return {
        "pipeline": plan.key.pipeline,
        "stage": plan.key.stage,
        "partition": plan.key.partition,
        "watermark": format_utc(plan.watermark),
        "initialised": plan.initialised,
        "target": format_utc(plan.target),
        "lag_behind_seconds": plan.lag_behind.total_seconds(),
        "window": {"start": format_utc(plan.window.start), "end": format_utc(plan.window.end)},
        "pending_files": plan.pending.files,
        "pending_bytes": plan.pending.bytes,
        "oldest_pending": format_utc(plan.pending.oldest) if plan.pending.oldest else None,
        "newest_pending": format_utc(plan.pending.newest) if plan.pending.newest else None,
    }


def _print_plan(plan: CyclePlan) -> None:
    state = "" if plan.initialised else " (not initialised yet: first run starts here)"
    print(f"pipeline:      {plan.key}")
    print(f"watermark:     {format_utc(plan.watermark)}{state}")
    print(f"target:        {format_utc(plan.target)}")
    print(f"lag behind:    {plan.lag_behind}")
    print(f"window:        {plan.window}")
    print(f"pending:       {plan.pending.files} files, {_human_bytes(plan.pending.bytes)}")
    if plan.pending.oldest:
        print(
            f"oldest/newest: {format_utc(plan.pending.oldest)} / "
            f"{format_utc(plan.pending.newest or plan.pending.oldest)}"
        )


# --- commands ---------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("DESWM_CONFIG")
    if not path:
        raise ConfigError("no config file given", hint="pass -c FILE or set DESWM_CONFIG")
    return load_config(path)


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    orchestrator = config.build_orchestrator(partition=args.partition, read_only=args.dry_run)
    if args.dry_run:
        plan = orchestrator.plan()
        _print_json(_plan_dict(plan)) if args.json else _print_plan(plan)
        return EXIT_OK
    observers = list(orchestrator.observers)
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        from deswm.metrics import PrometheusObserver

        metrics = PrometheusObserver()
        for component in (orchestrator.source, orchestrator.store):
            engine = getattr(component, "engine", None)
            if engine is not None:
                metrics.instrument(engine)
        start_http_server(args.metrics_port)
        observers.append(metrics)
    if args.progress:
        from deswm.progress import ProgressObserver

        observers.append(ProgressObserver(total=orchestrator.plan().pending.files))
    orchestrator.observers = tuple(observers)
    if args.interval is not None:
        orchestrator.run_forever(args.interval)
        return EXIT_OK
    try:
        result = orchestrator.run_cycle()
    except CycleError as exc:
        if args.json and exc.result is not None:
            _print_json({"error": str(exc), "result": exc.result})
        raise
    if args.json:
        _print_json(result)
    else:
        print(result.summary())
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    config = _config(args)
    orchestrator = config.build_orchestrator(partition=args.partition, read_only=True)
    plan = orchestrator.plan()
    found = {name: _sample(orchestrator.source, name) for name, _ in _CREATED_AT_WARNINGS}
    if args.json:
        payload = _plan_dict(plan)
        for name, uids in found.items():
            payload[f"rows_with_{name}"] = uids
        _print_json(payload)
    else:
        _print_plan(plan)
        for name, warning in _CREATED_AT_WARNINGS:
            if found[name]:
                print(f"warning: {warning}, e.g. " + ", ".join(found[name]))
    return EXIT_OK


# Rows whose created_at keeps them out of every window (G17): the finder method of the
# source (SqlSourceProvider), and what ``deswm stats`` says about them. Both are range
# lookups on created_at; malformed_created_at() scans the table, so stats leaves it out.
_CREATED_AT_WARNINGS = (
    ("null_created_at", "rows with NULL created_at are never archived"),
    (
        "unplaceable_created_at",
        "rows whose created_at no window can hold (a number or bytes on SQLite, a year "
        "outside 0001-9999, the day 9999-12-31) stop every run",
    ),
)


def _sample(source: object, name: str) -> list[str]:
    finder: Callable[..., list[str]] | None = getattr(source, name, None)
    return list(finder(limit=5)) if finder is not None else []


_READ_ACTIONS = frozenset({"get", "list", "history"})
_NOT_CREATED = "not initialised yet; the first `deswm run` creates it"


def _missing_table(store: object) -> bool:
    """Whether ``store`` keeps its data in a table that does not exist yet."""
    exists: Callable[[], bool] | None = getattr(store, "exists", None)
    return exists is not None and not exists()


def cmd_watermark(args: argparse.Namespace) -> int:
    config = _config(args)
    action = args.action
    orchestrator = config.build_orchestrator(
        partition=args.partition, read_only=action in _READ_ACTIONS
    )
    store = orchestrator.store
    key = orchestrator.key
    if action == "list":
        marks = store.list(None if args.all else key.pipeline)
        if args.json:
            _print_json([_watermark_dict(w) for w in marks])
        else:
            for mark in marks:
                print(f"{mark.key}  {format_utc(mark.position)}  version {mark.version}")
            if not marks:
                table = " (the watermark table is " + _NOT_CREATED + ")"
                print("no watermarks stored yet" + (table if _missing_table(store) else ""))
        return EXIT_OK
    if action == "history":
        changes = store.history(key, limit=args.limit)
        if args.json:
            _print_json(list(changes))
        else:
            for change in changes:
                before = format_utc(change.previous) if change.previous else "-"
                after = format_utc(change.position) if change.position else "-"
                print(
                    f"{format_utc(change.changed_at)}  {change.actor}  "
                    f"{before} -> {after}  {change.reason}"
                )
        return EXIT_OK
    if action == "get":
        current = store.get(key)
        if current is None:
            # Only read: nothing is created (the first `deswm run` initialises it).
            message = (
                f"pipeline {key.pipeline!r} has no watermark ({key}): {_NOT_CREATED}, "
                f"starting at {format_utc(orchestrator.initial_position())}"
            )
            if args.json:
                _print_json(
                    {
                        "pipeline": key.pipeline,
                        "stage": key.stage,
                        "partition": key.partition,
                        "position": None,
                        "version": None,
                    }
                )
            else:
                print(message)
            return EXIT_FAILURE
        if args.json:
            _print_json(_watermark_dict(current))
        else:
            print(f"{key}: {format_utc(current.position)} (version {current.version})")
        return EXIT_OK
    reason = args.reason or f"deswm watermark {action}"
    try:
        move = _move(args, orchestrator, reason)
    except WatermarkMoveRefused as exc:
        _note_aligned(exc.requested, exc.position)
        raise ConfigError(exc.message, key="--to", hint=f"pass --force {exc.unless}") from exc
    _note_aligned(move.requested, move.watermark.position)
    updated = move.watermark
    if args.json:
        _print_json(_watermark_dict(updated))
    else:
        before = format_utc(move.previous.position) if move.previous else "(unset)"
        print(f"{key}: {before} -> {format_utc(updated.position)} (version {updated.version})")
    return EXIT_OK


def _move(
    args: argparse.Namespace, orchestrator: WatermarkOrchestrator, reason: str
) -> WatermarkMove:
    """Parse the action's argument and call the library, which holds the guards."""
    if args.action == "set":
        if not args.to:
            raise ConfigError("watermark set needs --to ISO", key="--to")
        to = parse_timestamp(args.to, "--to")
        return orchestrator.set_watermark(to, force=args.force, reason=reason)
    if args.action == "adjust":
        if args.days_offset is None:
            raise ConfigError("watermark adjust needs --days-offset N", key="--days-offset")
        return orchestrator.adjust_watermark(args.days_offset, force=args.force, reason=reason)
    return orchestrator.reset_watermark(force=args.force, reason=reason)


def _note_aligned(requested: datetime, position: datetime) -> None:
    if requested != position:
        aligned = format_utc(position)
        print(
            f"note: {format_utc(requested)} aligned down to the bucket start {aligned}",
            file=sys.stderr,
        )


def cmd_errors(args: argparse.Namespace) -> int:
    config = _config(args)
    orchestrator = config.build_orchestrator(
        partition=args.partition, read_only=args.action == "list"
    )
    store = orchestrator.error_store
    assert store is not None  # build_orchestrator always provides one
    if args.action == "list":
        recorded = store.list(orchestrator.key, limit=args.limit)
        if args.json:
            _print_json(list(recorded))
        else:
            for entry in recorded:
                failure = entry.failure
                print(
                    f"{format_utc(failure.created_at)}  {failure.uid!r}  {failure.location}  "
                    f"{failure.stage}: {failure.error_type}: {failure.message}  "
                    f"(attempts {entry.attempts}, last {format_utc(entry.last_failure)})"
                )
            if not recorded:
                missing = _missing_table(store)
                table = f" (the error table is {_NOT_CREATED})" if missing else ""
                print(f"no recorded failures for {orchestrator.key}{table}")
        return EXIT_OK
    result = orchestrator.retry_errors(limit=args.limit)
    if args.json:
        _print_json(result)
    else:
        print(
            f"retried {result.attempted} file(s): {result.archived} archived, "
            f"{len(result.failures)} still failing, {result.shards_written} shard(s) written"
        )
        for failure in result.failures:
            print(f"still failing: {failure.uid!r} ({failure.location}): {failure.message}")
    return EXIT_OK if not result.failures else EXIT_FAILURE


def cmd_flag(args: argparse.Namespace) -> int:
    job = _config(args).build_flag_job()
    result = job.run(dry_run=args.dry_run)
    if args.json:
        _print_json(result)
    else:
        verb = "would flag" if result.dry_run else "flagged"
        print(
            f"{job.key}: window {result.window}: {verb} {result.rows_updated} row(s) in "
            f"{result.batches} batch(es), {result.buckets_committed} day(s) done"
        )
    return EXIT_OK


def cmd_purge(args: argparse.Namespace) -> int:
    config = _config(args)
    job = config.build_purge_job(partition=args.partition, verify=args.verify)
    result = job.run(dry_run=args.dry_run)
    if args.json:
        _print_json(result)
    else:
        verb = "would delete" if result.dry_run else "deleted"
        print(
            f"{job.key}: window {result.window}: {verb} {result.deleted} file(s), "
            f"{result.already_gone} already gone, {result.kept_listed} kept (in the error "
            f"table), {result.kept_shared} kept (another row still needs the file), "
            f"{result.buckets_committed} day(s) done"
        )
    return EXIT_OK


def cmd_get(args: argparse.Namespace) -> int:
    config = _config(args)
    created_at = parse_timestamp(args.created_at, "--created-at")
    archive = config.build_archive()
    if args.output in (None, "-"):
        data = archive.get(args.uid, created_at, allow_unverified=args.allow_unverified)
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return EXIT_OK
    output = Path(args.output)
    into_folder = output.is_dir() or args.output.endswith(("/", os.sep))
    if into_folder:
        output = output / _file_name(args.uid, output)
    data = archive.get(args.uid, created_at, allow_unverified=args.allow_unverified)
    _write_file(output, data, follow=not into_folder)
    print(f"wrote {len(data)} bytes to {output}", file=sys.stderr)
    return EXIT_OK


def _file_name(uid: str, folder: Path) -> str:
    """``uid`` as one file name in ``folder``; a uid that is not one is refused.

    A uid is a name in the archive, not a path: ``../../x`` or ``a/b`` must not write
    outside ``folder`` (``-o FILE`` chooses any name).
    """
    reason = None
    if uid in ("", ".", ".."):
        reason = "is not a file name"
    elif "/" in uid or "\\" in uid or (os.altsep and os.altsep in uid):
        reason = "contains a path separator"
    elif "\x00" in uid:
        reason = "contains a NUL byte"
    elif len(os.fsencode(uid)) > 255:
        reason = "is longer than a file name may be (255 bytes)"
    if reason is None:
        return uid
    raise ConfigError(
        f"the uid {uid!r} {reason}, so it cannot be a file name in {folder}",
        key="--output",
        hint="Pass -o with a file path to choose the name, or -o - for stdout",
    )


def _write_file(path: Path, data: bytes, *, follow: bool) -> None:
    """Write ``data`` to ``path``; with ``follow=False`` never through a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o666)
        with open(fd, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        raise DeswmError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="Check the folder exists and is writable (a symlink named after the uid "
            "is not followed)",
        ) from exc


def cmd_verify(args: argparse.Namespace) -> int:
    from deswm.verify import verify_window

    config = _config(args)
    orchestrator = config.build_orchestrator(partition=args.partition, read_only=True)
    watermark = orchestrator.store.get(orchestrator.key)
    if watermark is None:
        print("nothing to verify: the watermark is not initialised")
        return EXIT_OK
    since = (
        parse_timestamp(args.since, "--since") if args.since else orchestrator.initial_position()
    )
    window = Window(min(since, watermark.position), watermark.position)
    part = orchestrator.partition
    router = orchestrator.router
    try:
        check: Callable[[], None] | None = getattr(orchestrator.source, "check_placeable", None)
        if check is not None:  # also when the window is empty
            check()
        report = verify_window(
            orchestrator.source,
            config.build_archive(),
            window,
            deep=args.deep,
            owns=None if part.count == 1 else lambda r: part.owns(router.shard_index(r.uid)),
        )
    except UnplaceableRowError as exc:
        # No window holds these rows, so nothing below the watermark vouches for them.
        if args.json:
            _print_json({"error": str(exc), "unplaceable": [list(row) for row in exc.rows]})
        else:
            for uid, stored in exc.rows:
                print(f"unplaceable: {uid!r} created_at={stored}")
            print(f"verify stopped: {exc}")
        return EXIT_FAILURE
    if args.json:
        _print_json(report)
    else:
        print(
            f"checked {report.checked} rows in {window}: "
            f"{report.missing_count} missing, {report.corrupt_count} corrupt"
        )
        for record in report.missing:
            print(
                f"missing: {record.uid!r} created_at={format_utc(record.created_at)} "
                f"({record.location})"
            )
        for record, reason in report.corrupt:
            print(f"corrupt: {record.uid!r}: {reason}")
        if report.unverified_count:
            print(f"{report.unverified_count} unverified (no checksum, other DES writers)")
        for record in report.unverified:
            print(f"unverified: {record.uid!r} created_at={format_utc(record.created_at)}")
    return EXIT_OK if report.ok else EXIT_FAILURE


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args)
    try:
        from deswm.serve import serve
    except ImportError as exc:
        raise ConfigError(
            f"deswm serve needs the serve extra ({exc.name} is missing)",
            hint="pip install 'deswm[serve]'",
        ) from None
    serve(config, host=args.host, port=args.port, insecure_no_auth=args.insecure_no_auth)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from deswm.demo import run_demo

    run_demo(Path(args.dir), files=args.files)
    return EXIT_OK


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deswm",
        description="Archive the files of a huge SQL table into DES shards, "
        "tracked by a watermark.",
    )
    parser.add_argument("--version", action="version", version=f"deswm {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help_text: str, func: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        if name != "demo":
            p.add_argument("-c", "--config", help="config file (.toml/.yaml); or set DESWM_CONFIG")
        return p

    def with_output(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument(
            "--partition", type=int, default=None, help="partition index (default: run.partition)"
        )

    run = command("run", "run one cycle (default) or keep running on an interval", cmd_run)
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="run one cycle and exit (default)")
    mode.add_argument(
        "--interval", type=float, metavar="SECONDS", help="run a cycle every SECONDS until SIGTERM"
    )
    mode.add_argument(
        "--dry-run", action="store_true", help="show the window and pending files; write nothing"
    )
    run.add_argument(
        "--progress", action="store_true", help="show a progress bar (deswm[progress])"
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port (deswm[prometheus])",
    )
    with_output(run)

    stats = command("stats", "watermark, target, lag and pending files", cmd_stats)
    with_output(stats)

    wm = command("watermark", "get, set, adjust, reset or list watermarks", cmd_watermark)
    wm.add_argument("action", choices=["get", "set", "adjust", "reset", "list", "history"])
    wm.add_argument("--to", help="new position for set (ISO 8601; no offset means UTC)")
    wm.add_argument(
        "--days-offset", type=float, help="move by N days for adjust (negative replays)"
    )
    wm.add_argument("--reason", help="why (kept in the history)")
    wm.add_argument("--force", action="store_true", help="allow moving forward or past the target")
    wm.add_argument("--all", action="store_true", help="list every pipeline")
    wm.add_argument("--limit", type=int, default=20, help="history entries to show")
    with_output(wm)

    errors = command("errors", 'list or retry files recorded by on_error="record"', cmd_errors)
    errors.add_argument("action", choices=["list", "retry"])
    errors.add_argument("--limit", type=int, default=None, help="at most this many")
    with_output(errors)

    flag = command(
        "flag", "back-fill a legacy archived column behind the watermark ([flag])", cmd_flag
    )
    flag.add_argument("--dry-run", action="store_true", help="count rows, update nothing")
    flag.add_argument("--json", action="store_true", help="print JSON")

    purge = command("purge", "delete source files of archived days, verified first", cmd_purge)
    purge.add_argument("--dry-run", action="store_true", help="verify and count, delete nothing")
    purge.add_argument(
        "--verify",
        choices=["content", "index"],
        default="content",
        help="content: compare with the verified archived copy (default); index: entry exists",
    )
    with_output(purge)

    get = command("get", "write one archived file's bytes", cmd_get)
    get.add_argument("uid")
    get.add_argument("--created-at", required=True, help="the row's created_at (ISO 8601)")
    get.add_argument("-o", "--output", help="output file (default: stdout)")
    get.add_argument(
        "--allow-unverified",
        action="store_true",
        help="write an entry without a checksum (other DES writers), with a warning",
    )

    verify = command("verify", "check every row below the watermark is in the archive", cmd_verify)
    verify.add_argument("--since", help="start of the checked range (default: watermark.initial)")
    verify.add_argument(
        "--deep", action="store_true", help="read every file back and verify checksums"
    )
    with_output(verify)

    serve = command("serve", "serve archived files over HTTP (deswm[serve])", cmd_serve)
    serve.add_argument("--host", help="address to listen on (default: serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: serve.port, 8080)")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback host without a token (a proxy in front authenticates)",
    )

    demo = command("demo", "create sample data, archive it and read a file back", cmd_demo)
    demo.add_argument(
        "--dir", default="deswm-demo", help="folder for the demo (default: ./deswm-demo)"
    )
    demo.add_argument(
        "--files", type=int, default=1000, help="number of sample files (default: 1000)"
    )
    return parser


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (it may be replaced after setup)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class _RedactingFormatter(logging.Formatter):
    """Log lines (tracebacks included) with URL secrets and known passwords masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("deswm")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deswm`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"deswm: configuration error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except DeswmError as exc:
        print(f"deswm: {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("deswm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
