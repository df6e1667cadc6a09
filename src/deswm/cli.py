"""The ``deswm`` command: run cycles, see stats, steer the watermark, read files back.

Exit codes: 0 success (a run stopped by SIGTERM/SIGINT, ``--max-buckets`` or
``--run-time`` at a bucket boundary included), 1 a failure at run time (failed files,
conflicts, missing entries, ``--interval`` giving up), 2 a usage or configuration error
(a missing optional package included), 130/143 a second SIGINT/SIGTERM, 141 stdout
closed early (``deswm stats | head``); ``reconcile`` exits 1 when days differ from their
manifests (late rows, not repaired) and 2 on any error. Output is text for people, or
JSON with ``--json``. Errors are one line with a hint; ``--debug`` adds tracebacks.
Passwords in URLs are never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import math
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from deswm._config import Config, load_config
from deswm._defaults import EXECUTORS
from deswm._errors import (
    ConfigError,
    CycleError,
    DeswmError,
    UnplaceableRowError,
    WatermarkMoveRefused,
)
from deswm._extras import require
from deswm._humanize import human_bytes, human_count, human_duration, human_time
from deswm._logs import LogFormat, setup_logging, skip_events
from deswm._model import STOP_REASON_TEXT, CyclePlan, Watermark, WatermarkMove, Window
from deswm._redact import redact
from deswm._timeutil import format_utc, parse_timestamp

if TYPE_CHECKING:
    from deswm._manifest import BucketManifest
    from deswm._model import Partition
    from deswm._orchestrator import CycleObserver, WatermarkOrchestrator
    from deswm._reconcile import ReconcileReport

__all__ = ["main"]

log = logging.getLogger("deswm.cli")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE, what a shell reports for a command whose reader went away."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("deswm")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        number = "unknown"
    # Whether local files are read through the C helper (docs/performance.md).
    helper = "built" if importlib.util.find_spec("deswm._native") else "not built"
    return f"{number} (C helper: {helper})"


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
        "delay_seconds": watermark.lag.total_seconds() if watermark.lag is not None else None,
        "updated_at": format_utc(watermark.updated_at) if watermark.updated_at else None,
        "updated_by": watermark.updated_by,
    }


def _plan_dict(plan: CyclePlan) -> dict[str, Any]:
    return {
        "pipeline": plan.key.pipeline,
        "stage": plan.key.stage,
        "partition": plan.key.partition,
        "watermark": format_utc(plan.watermark),
        "initialised": plan.initialised,
        "target": format_utc(plan.target),
        "delay_seconds": plan.delay.total_seconds() if plan.delay is not None else None,
        "behind_seconds": plan.behind.total_seconds(),
        "held_by_transaction": format_utc(plan.held_by) if plan.held_by else None,
        "window": {"start": format_utc(plan.window.start), "end": format_utc(plan.window.end)},
        "pending_files": plan.pending.files,
        "pending_bytes": plan.pending.bytes,
        "oldest_pending": format_utc(plan.pending.oldest) if plan.pending.oldest else None,
        "newest_pending": format_utc(plan.pending.newest) if plan.pending.newest else None,
        **_before_start_dict(plan),
    }


def _before_start_dict(plan: CyclePlan) -> dict[str, Any]:
    before = plan.before_start
    return {
        "rows_before_start": None if before is None else before.files,
        "bytes_before_start": None if before is None else before.bytes,
        "oldest_before_start": format_utc(before.oldest) if before and before.oldest else None,
    }


def _print_before_start(plan: CyclePlan) -> None:
    """Rows older than where the new watermark starts: never archived, so say so."""
    before = plan.before_start
    if before is None or not before.files:
        return
    oldest = format_utc(before.oldest) if before.oldest else "?"
    print(
        f"warning: {human_count(before.files)} row(s) ({human_bytes(before.bytes)}) are older than "
        f"{format_utc(plan.watermark)}, where the new watermark starts, and will never be "
        f"archived (the oldest from {oldest}); to archive them set [watermark] initial "
        "to an earlier date before the first run (without it: 30 days back)"
    )


def _print_plan(plan: CyclePlan) -> None:
    print(plan)
    _print_before_start(plan)


# --- commands ---------------------------------------------------------------------------------


def _config_path(args: argparse.Namespace) -> str:
    path: str | None = args.config or os.environ.get("DESWM_CONFIG")
    if not path:
        raise ConfigError("no config file given", hint="pass -c FILE or set DESWM_CONFIG")
    return path


def _config(args: argparse.Namespace) -> Config:
    config = load_config(_config_path(args))
    if args.log_format is None and config.monitoring.log_format != "text":
        _setup_logging(args, config.monitoring.log_format)
    return config


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Orchestrator options given on the command line (they win over ``[run]``)."""
    overrides: dict[str, Any] = {}
    if args.max_buckets is not None:
        overrides["max_buckets"] = args.max_buckets
    if args.run_time is not None:
        overrides["run_time"] = args.run_time
    if args.workers is not None:
        overrides["workers"] = args.workers
    if args.executor is not None:
        overrides["executor"] = args.executor
    if args.lane_batch_rows is not None:
        overrides["lane_batch_rows"] = args.lane_batch_rows
    return overrides


def cmd_run(args: argparse.Namespace) -> int:
    config = _with_source_limits(_config(args), args)
    orchestrator = config.build_orchestrator(
        partition=args.partition, read_only=args.dry_run, **_run_overrides(args)
    )
    if args.dry_run:
        plan = orchestrator.plan()
        if args.json:
            _print_json(_plan_dict(plan))
        else:
            _print_plan(plan)
        return EXIT_OK
    # From here on SIGTERM/SIGINT stop at the next bucket boundary (a second one exits);
    # leaving the block shuts the packing engine's lanes down.
    with orchestrator, orchestrator.stop_on_signals():
        return _run(args, config, orchestrator)


def _run(args: argparse.Namespace, config: Config, orchestrator: WatermarkOrchestrator) -> int:
    orchestrator.observers = (*orchestrator.observers, *_observers(args, config, orchestrator))
    if args.interval is not None:
        failed = args.max_failed_cycles
        reason = orchestrator.run_forever(
            config.run.interval if args.interval is _CONFIGURED else args.interval,
            handle_signals=False,  # installed above
            max_failed_cycles=config.run.max_failed_cycles if failed is None else failed,
            after_cycle=_reconcile_every(config, orchestrator),
        )
        if args.json:
            _print_json({"stopped": reason})
        else:
            print(f"stopped: {STOP_REASON_TEXT[reason]}")
        return EXIT_OK
    try:
        # Text output prints the result once, below: the log's copy of it is left out.
        with skip_events("cycle_finished") if not args.json else contextlib.nullcontext():
            result = orchestrator.run_cycle()
    except CycleError as exc:
        if args.json and exc.result is not None:
            _print_json({"error": str(exc), "result": exc.result})
        raise
    if args.json:
        _print_json(result)
    else:
        print(result)
    return EXIT_OK


def _reconcile_every(
    config: Config, orchestrator: WatermarkOrchestrator
) -> Callable[[int], None] | None:
    """``[run] reconcile_every``: a reconcile (``--repair`` with ``reconcile_repair``) of
    the committed days after every N-th cycle of ``--interval``, by this runner."""
    every = config.run.reconcile_every
    if not every:
        return None
    from deswm._reconcile import ReconcileJob

    job = ReconcileJob(orchestrator, config.build_manifests())

    def reconcile(cycles: int) -> None:
        if cycles % every:
            return
        report = job.run(repair=config.run.reconcile_repair)
        if not report.ok:
            log.warning(
                "reconcile: %d day(s) of %s differ from their manifests (%d late row(s)); "
                "run `deswm reconcile --repair` or set run.reconcile_repair = true",
                len(report.changed),
                report.key,
                report.late_rows,
            )
        else:
            log.info(
                "reconcile: %d day(s) checked, %d repaired",
                len(report.buckets),
                sum(1 for bucket in report.buckets if bucket.repaired),
            )

    return reconcile


def _observers(
    args: argparse.Namespace, config: Config, orchestrator: WatermarkOrchestrator
) -> list[CycleObserver]:
    """The metrics, health file and progress output ``run``'s flags and config ask for."""
    monitoring = config.monitoring
    port = args.metrics_port if args.metrics_port is not None else monitoring.metrics_port
    push = args.metrics_push or monitoring.metrics_push
    textfile = args.metrics_textfile or monitoring.metrics_textfile
    health = args.health_file or monitoring.health_file
    observers: list[CycleObserver] = []
    if health:
        from deswm._health import HealthFile

        observers.append(HealthFile(health))
    if port is not None or push or textfile:
        from deswm._metrics import PrometheusObserver
        from deswm._metrics import _client as client

        registry = client().CollectorRegistry()
        metrics = PrometheusObserver(
            registry,
            plan=orchestrator.plan,
            push_url=push,
            job=args.metrics_job or monitoring.metrics_job,
            textfile=textfile,
        )
        for component in (orchestrator.source, orchestrator.store):
            engine = getattr(component, "engine", None)
            if engine is not None:
                metrics.instrument(engine)
        if port is not None:
            client().start_http_server(port, registry=registry)
        observers.append(metrics)
    if args.progress:
        from deswm._progress import ProgressObserver

        interval = args.progress_interval or monitoring.progress_interval
        plan = orchestrator.plan

        def total() -> int:  # again for every cycle of --interval
            return plan().pending.files

        observers.append(ProgressObserver(total=total, interval=interval))
    return observers


_CONFIGURED = object()
"""``--interval`` given without a value: ``run.interval`` from the config."""


def _row_progress(
    args: argparse.Namespace, config: Config, label: str, *, unit: str = "row"
) -> contextlib.AbstractContextManager[Callable[[int], None] | None]:
    """A :class:`~deswm._rowprogress.RowProgress` when ``--progress`` was given, else None."""
    if not getattr(args, "progress", False):
        return contextlib.nullcontext(None)
    from deswm._rowprogress import RowProgress

    interval = args.progress_interval or config.monitoring.progress_interval
    return RowProgress(label, unit=unit, interval=interval)


_SOURCE_LIMIT_FLAGS: tuple[tuple[str, bool, str, str], ...] = (
    ("max_rows_per_second", True, "N", "read at most N source rows a second"),
    ("max_pages_per_second", True, "N", "send at most N page queries a second"),
    ("sleep_coef", False, "F", "after each page wait F times its query time"),
    ("max_replica_lag", False, "SECONDS", "pause while source.replica_url lags more than this"),
)
"""``deswm run``'s overrides of ``[source]`` limits: (setting, must be > 0, metavar, help);
the flag is the setting with dashes."""


def _with_source_limits(config: Config, args: argparse.Namespace) -> Config:
    """``config`` with the ``[source]`` rate limits given on the command line."""
    given = {
        name: getattr(args, name)
        for name, *_ in _SOURCE_LIMIT_FLAGS
        if getattr(args, name, None) is not None
    }
    if not given:
        return config
    if "max_replica_lag" in given and config.source.replica_url is None:
        raise ConfigError(
            "has nothing to watch: source.replica_url is not set",
            key="--max-replica-lag",
            hint="set [source] replica_url to the replica whose lag should pause the reads",
        )
    return attrs.evolve(config, source=attrs.evolve(config.source, **given))


def _number(*, positive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            wanted = "a positive number" if positive else "zero or a positive number"
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    return parse


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
                print(f"{mark.key}  {human_time(mark.position)}  version {mark.version}")
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
                print(
                    f"{human_time(change.changed_at)}  {change.actor}  "
                    f"{human_time(change.previous)} -> {human_time(change.position)}  "
                    f"{change.reason}"
                )
        return EXIT_OK
    if action == "get":
        current = store.get(key)
        if current is None:
            # Only read: nothing is created (the first `deswm run` initialises it).
            message = (
                f"pipeline {key.pipeline!r} has no watermark ({key}): {_NOT_CREATED}, "
                f"starting at {human_time(orchestrator.initial_position())}"
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
            delay = f", delay {human_duration(current.lag)}" if current.lag is not None else ""
            print(f"{key}: {human_time(current.position)} (version {current.version}{delay})")
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
        before = human_time(move.previous.position) if move.previous else "(unset)"
        print(f"{key}: {before} -> {human_time(updated.position)} (version {updated.version})")
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
        aligned = human_time(position)
        print(
            f"note: {human_time(requested)} aligned down to the bucket start {aligned}",
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
                    f"{human_time(failure.created_at)}  {failure.uid!r}  {failure.location}  "
                    f"{failure.stage}: {failure.error_type}: {failure.message}  "
                    f"(attempts {entry.attempts}, last {human_time(entry.last_failure)})"
                )
            if not recorded:
                missing = _missing_table(store)
                table = f" (the error table is {_NOT_CREATED})" if missing else ""
                print(f"no recorded failures for {orchestrator.key}{table}")
        return EXIT_OK
    with _row_progress(args, config, "errors retry", unit="file") as progress:
        result = orchestrator.retry_errors(limit=args.limit, progress=progress)
    if args.json:
        _print_json(result)
    else:
        print(
            f"retried {result.attempted} file(s): {result.archived} archived, "
            f"{len(result.failures)} still failing, {result.shards_written} shard(s) written "
            f"in {human_duration(result.duration)}"
        )
        for failure in result.failures:
            print(f"still failing: {failure.uid!r} ({failure.location}): {failure.message}")
    return EXIT_OK if not result.failures else EXIT_FAILURE


def cmd_flag(args: argparse.Namespace) -> int:
    config = _config(args)
    job = config.build_flag_job(verify="counts" if args.counts_only else None)
    with _row_progress(args, config, "flag") as progress:
        result = job.run(dry_run=args.dry_run, progress=progress)
    if args.json:
        _print_json(result)
    else:
        verb = "would flag" if result.dry_run else "flagged"
        print(
            f"{job.key}: window {result.window}: {verb} {result.rows_updated} row(s) in "
            f"{result.batches} batch(es), {result.buckets_committed} day(s) done"
            + (
                f"; {result.rows_listed} row(s) listed in the error table left unflagged"
                if result.rows_listed
                else ""
            )
        )
    return EXIT_OK


def cmd_source(args: argparse.Namespace) -> int:
    """``install-functions``: the SQL functions partition pushdown needs (PostgreSQL)."""
    if args.print_sql:
        from deswm._sql.shardsql import POSTGRES_CRC32_DDL

        print(POSTGRES_CRC32_DDL, end="")
        return EXIT_OK
    config = _config(args)
    source_engine, _store_engine = config.build_engines()
    source = config.build_source(source_engine)
    created = source.install_functions()
    if args.json:
        _print_json({"created": created})
    elif created:
        print(f"created {', '.join(created)} on {source.redacted_url}")
    else:
        print(f"{source.engine.dialect.name} needs no function: partitions are filtered in SQL")
    return EXIT_OK


def cmd_purge(args: argparse.Namespace) -> int:
    config = _config(args)
    job = config.build_purge_job(partition=args.partition, verify=args.verify)
    with _row_progress(args, config, "purge") as progress:
        result = job.run(dry_run=args.dry_run, progress=progress)
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


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Late rows: exit 0 when every day matches (or was repaired), 1 when a day differs
    and was not repaired, 2 on any error (configuration, database, archive)."""
    config = _config(args)
    try:
        since = parse_timestamp(args.since, "--since") if args.since else None
        until = parse_timestamp(args.until, "--until") if args.until else None
        job = config.build_reconcile_job(partition=args.partition, read_only=not args.repair)
        with _row_progress(args, config, "reconcile") as progress:
            report = job.run(
                since=since,
                until=until,
                counts_only=args.counts_only,
                repair=args.repair,
                progress=progress,
            )
    except ConfigError:
        raise
    except DeswmError as exc:
        _report(args, exc, f"{type(exc).__name__}: ")
        return EXIT_USAGE
    if args.json:
        _print_json(_reconcile_dict(report))
    else:
        _print_reconcile(report)
    return EXIT_OK if report.ok else EXIT_FAILURE


def _reconcile_dict(report: ReconcileReport) -> dict[str, Any]:
    out = to_jsonable(report)
    out.update(
        ok=report.ok,
        late_rows=report.late_rows,
        deleted_rows=report.deleted_rows,
        changed=[bucket.day for bucket in report.changed],
    )
    for entry, bucket in zip(out["buckets"], report.buckets, strict=True):
        entry.update(day=bucket.day, matches=bucket.matches, ok=bucket.ok)
        entry["partition"] = f"{bucket.partition.index}/{bucket.partition.count}"
    return dict(out)


_SHOWN_UIDS = 20
"""uids listed per day and kind in the text output (``--json`` lists them all)."""


def _print_reconcile(report: ReconcileReport) -> None:
    changed = report.changed
    repaired = sum(1 for bucket in report.buckets if bucket.repaired)
    mode = "counts" if report.counts_only else "counts and digests"
    print(
        f"{report.key}: checked {len(report.buckets)} day(s) in {report.window} ({mode}): "
        f"{len(changed)} changed, {report.late_rows} late row(s), "
        f"{report.deleted_rows} deleted from the source"
        + (f", {repaired} repaired" if report.repair else "")
    )
    for bucket in changed:
        recorded = "no manifest" if bucket.manifest_rows is None else str(bucket.manifest_rows)
        state = " (repaired)" if bucket.repaired else ""
        print(
            f"  {bucket.day} p{bucket.partition.index}/{bucket.partition.count}: source "
            f"{bucket.source_rows} row(s), manifest {recorded}: {len(bucket.late)} late, "
            f"{len(bucket.deleted)} deleted{state}"
        )
        for kind, keys in (("late", bucket.late), ("deleted", bucket.deleted)):
            for uid, created_at in keys[:_SHOWN_UIDS]:
                print(f"    {kind}: {uid!r} created_at={format_utc(created_at)}")
            if len(keys) > _SHOWN_UIDS:
                print(f"    {kind}: ... and {len(keys) - _SHOWN_UIDS} more (--json lists all)")
    if not report.ok:
        print("late rows are not archived: run `deswm reconcile --repair` to archive them")


def cmd_manifest(args: argparse.Namespace) -> int:
    from deswm._manifest import manifest_dict

    config = _config(args)
    archive = config.build_archive()
    day = _day_arg(args.day)
    partition = (
        None if args.partition is None else _partition(args.partition, config.run.partitions)
    )
    if args.rebuild:
        owner = partition or _partition(config.run.partition, config.run.partitions)
        manifest = _rebuild_manifest(config, day, owner)
    else:
        manifest = archive.manifest(day, partition=partition)
    written_at = archive.manifests.written_at(manifest.day, manifest.partition)
    if args.json:
        _print_json(manifest_dict(manifest, written_at))
        return EXIT_OK
    verb = "rebuilt" if args.rebuild else "committed"
    print(
        f"{manifest.name}: day {manifest.day}, pipeline {manifest.pipeline!r}, partition "
        f"{manifest.partition.index}/{manifest.partition.count}, {verb} "
        f"{human_time(written_at) if written_at else 'at an unknown time'}"
    )
    print(
        f"rows: {human_count(manifest.rows)} ({manifest.listed} listed in the error table), "
        f"digest {manifest.digest}"
    )
    print(
        f"entries: {human_count(manifest.entries)} in {len(manifest.parts)} part(s) of "
        f"{len(manifest.groups)} group(s)"
    )
    for part in manifest.parts:
        print(f"  {part.name}  {part.entries:>7} entries  {part.size:>12} bytes  {part.sha256}")
    return EXIT_OK


def _day_arg(text: str) -> datetime:
    """A ``YYYYMMDD`` or ISO date argument as its UTC midnight."""
    from deswm._timeutil import parse_day

    compact = text.replace("-", "")
    return parse_day(compact, "DAY")


def _partition(index: int, count: int) -> Partition:
    from deswm._model import Partition

    try:
        return Partition(index, count)
    except ValueError as exc:
        raise ConfigError(str(exc), key="--partition") from None


def _rebuild_manifest(config: Config, day: datetime, partition: Partition) -> BucketManifest:
    """Rebuild a committed day's manifest from its shards and the source's rows."""
    orchestrator = config.build_orchestrator(partition=partition.index, read_only=True)
    watermark = orchestrator.store.get(orchestrator.key)
    end = orchestrator.router.next_bucket(day)
    if watermark is None or watermark.position < end:
        raise ConfigError(
            f"day {day.date()} is not below the watermark of {orchestrator.key} "
            f"({format_utc(watermark.position) if watermark else 'not initialised'})",
            key="DAY",
            hint="Only committed days have manifests; `deswm run` writes them for new days",
        )
    listed = 0
    if orchestrator.error_store is not None:
        listed = sum(
            1
            for entry in orchestrator.error_store.list(orchestrator.key)
            if day <= entry.failure.created_at < end
        )
    archive = config.build_archive()
    return archive.manifests.rebuild(
        orchestrator.source, day, partition, orchestrator.key.pipeline, listed
    )


def cmd_audit(args: argparse.Namespace) -> int:
    from deswm._audit import locate

    config = _config(args)
    created_at = parse_timestamp(args.created_at, "--created-at")
    record = locate(config.build_archive(), args.uid, created_at)
    if args.json:
        _print_json(record.to_dict())
        return EXIT_OK
    for field, value in record.to_dict().items():
        print(f"{field}: {'-' if value is None else value}")
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
    print(f"wrote {human_bytes(len(data))} to {output}", file=sys.stderr)
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
    from deswm._verify import verify_window

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
        with _row_progress(args, config, "verify") as progress:
            report = verify_window(
                orchestrator.source,
                config.build_archive(),
                window,
                deep=args.deep,
                owns=None if part.count == 1 else lambda r: part.owns(router.shard_index(r.uid)),
                progress=progress,
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
            f"checked {human_count(report.checked)} rows in {window}: "
            f"{human_count(report.missing_count)} missing, "
            f"{human_count(report.corrupt_count)} corrupt"
        )
        for record in report.missing:
            print(
                f"missing: {record.uid!r} created_at={human_time(record.created_at)} "
                f"({record.location})"
            )
        for record, reason in report.corrupt:
            print(f"corrupt: {record.uid!r}: {reason}")
        if report.unverified_count:
            print(f"{report.unverified_count} unverified (no checksum, other DES writers)")
        for record in report.unverified:
            print(f"unverified: {record.uid!r} created_at={human_time(record.created_at)}")
    return EXIT_OK if report.ok else EXIT_FAILURE


def cmd_serve(args: argparse.Namespace) -> int:
    from deswm._config import load_archive_config

    config = load_archive_config(_config_path(args))  # the service never reads the source
    if args.log_format is None and config.monitoring.log_format != "text":
        _setup_logging(args, config.monitoring.log_format)
    try:
        from deswm.serve import serve
    except ImportError as exc:
        raise ConfigError(
            f"deswm serve needs the serve extra ({exc.name} is missing)",
            hint="pip install 'deswm[serve]'",
        ) from None
    serve(
        config,
        host=args.host,
        port=args.port,
        workers=args.workers,
        insecure_no_auth=args.insecure_no_auth,
    )
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from deswm._demo import run_demo

    run_demo(Path(args.dir), files=args.files)
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    shtab = require("shtab", extra="completion", feature="Shell completion")
    print(shtab.complete(build_parser(), shell=args.shell), end="")
    return EXIT_OK


# --- parser -----------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?\s*$")
_SECONDS = {None: 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> timedelta:
    """``--run-time``: seconds, or a number with ``s``, ``m``, ``h`` or ``d``."""
    match = _DURATION.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive duration (e.g. 900, 90s, 15m, 2h)"
        )
    return timedelta(seconds=float(match.group(1)) * _SECONDS[match.group(2)])


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _workers(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not zero or a positive integer")
    return value


def _common_options(default: Any) -> argparse.ArgumentParser:
    """-v/-q/--debug, accepted before and after the command.

    The sub-commands get them with ``default=SUPPRESS``, so a flag given before the
    command is not reset by the sub-command's own default (argparse shares the action
    objects of a parent, hence one parent for the main parser and one for the rest).
    """
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("output")
    group.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="debug logging"
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="only warnings and errors",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="debug logging and full tracebacks (errors are one line and a hint otherwise)",
    )
    group.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=None if default is False else default,
        help="log lines for people (text, default) or JSON objects (deswm[json-logs]); "
        "default: monitoring.log_format",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deswm",
        description="Archive the files of a huge SQL table into DES shards, "
        "tracked by a watermark.",
        parents=[_common_options(False)],
    )
    common = _common_options(argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"deswm {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help_text: str, func: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        p.set_defaults(func=func)
        if name not in ("demo", "completion"):
            p.add_argument("-c", "--config", help="config file (.toml/.yaml); or set DESWM_CONFIG")
        return p

    def with_output(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument(
            "--partition", type=int, default=None, help="partition index (default: run.partition)"
        )

    def with_progress(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--progress",
            action="store_true",
            help="show progress: a bar on a terminal (deswm[progress]), else log lines",
        )
        p.add_argument(
            "--progress-interval",
            type=float,
            metavar="SECONDS",
            help="without a terminal, one progress line every SECONDS (default 30)",
        )

    run = command("run", "run one cycle (default) or keep running on an interval", cmd_run)
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="run one cycle and exit (default)")
    mode.add_argument(
        "--interval",
        type=float,
        nargs="?",
        const=_CONFIGURED,
        metavar="SECONDS",
        help="run a cycle every SECONDS (default: run.interval) until SIGTERM",
    )
    mode.add_argument(
        "--dry-run", action="store_true", help="show the window and pending files; write nothing"
    )
    run.add_argument(
        "--progress", action="store_true", help="show a progress bar (deswm[progress])"
    )
    run.add_argument(
        "--progress-interval",
        type=float,
        metavar="SECONDS",
        help="without a terminal, one progress line every SECONDS (default 30)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port (deswm[prometheus])",
    )
    run.add_argument(
        "--workers",
        type=_workers,
        metavar="N|auto",
        help="lanes of the packing engine (default: run.workers, auto = the CPUs usable)",
    )
    run.add_argument(
        "--executor",
        choices=EXECUTORS,
        help="where lanes run (default: run.executor; inline = serial, in-process)",
    )
    run.add_argument(
        "--lane-batch-rows",
        type=_count,
        metavar="N",
        help="rows of a lane's share of a bucket kept in memory, the rest spill to "
        "archive.spill_dir; lanes on threads or processes get rows in frames of at most "
        "N (default: run.lane_batch_rows, 50000; 0 = no bound)",
    )
    run.add_argument(
        "--max-buckets",
        type=_positive_int,
        metavar="N",
        help="commit at most N day buckets per cycle (default: run.max_buckets)",
    )
    run.add_argument(
        "--run-time",
        type=_duration,
        metavar="DURATION",
        help="stop at the next bucket boundary after this long, e.g. 900, 15m, 2h "
        "(default: run.run_time); with --interval it bounds the whole run",
    )
    run.add_argument(
        "--max-failed-cycles",
        type=_count,
        metavar="N",
        help="with --interval: exit 1 after N failed cycles in a row, 0 never "
        "(default: run.max_failed_cycles)",
    )
    run.add_argument(
        "--metrics-push",
        metavar="URL",
        help="push metrics to this Prometheus Pushgateway after every bucket and cycle",
    )
    run.add_argument("--metrics-job", metavar="NAME", help="Pushgateway job name (deswm)")
    run.add_argument(
        "--metrics-textfile",
        metavar="PATH",
        help="write metrics to this .prom file (node_exporter textfile collector)",
    )
    run.add_argument(
        "--health-file",
        metavar="PATH",
        help="touch PATH after every committed bucket and successful cycle (liveness)",
    )
    limits = run.add_argument_group("source limits (override [source])")
    for name, positive, metavar, text in _SOURCE_LIMIT_FLAGS:
        limits.add_argument(
            "--" + name.replace("_", "-"),
            type=_number(positive=positive),
            metavar=metavar,
            help=text,
        )
    with_output(run)

    stats = command(
        "stats", "watermark, target, delay, how far behind, and pending files", cmd_stats
    )
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
    with_progress(errors)

    flag = command(
        "flag", "back-fill a legacy archived column behind the watermark ([flag])", cmd_flag
    )
    flag.add_argument("--dry-run", action="store_true", help="count rows, update nothing")
    flag.add_argument(
        "--counts-only",
        action="store_true",
        help='check each day\'s row count only, not its digest (flag.verify = "counts")',
    )
    flag.add_argument("--json", action="store_true", help="print JSON")
    with_progress(flag)

    source = command(
        "source", "install the SQL functions partition pushdown uses (PostgreSQL)", cmd_source
    )
    source.add_argument("action", choices=["install-functions"])
    source.add_argument(
        "--print-sql", action="store_true", help="print the DDL instead of running it"
    )
    source.add_argument("--json", action="store_true", help="print JSON")

    purge = command("purge", "delete source files of archived days, verified first", cmd_purge)
    purge.add_argument("--dry-run", action="store_true", help="verify and count, delete nothing")
    purge.add_argument(
        "--verify",
        choices=["content", "index"],
        default="content",
        help="content: compare with the verified archived copy (default); index: entry exists",
    )
    with_output(purge)
    with_progress(purge)

    reconcile = command(
        "reconcile",
        "find rows that reached committed days after their commit (late rows); --repair "
        "archives them",
        cmd_reconcile,
    )
    reconcile.add_argument(
        "--since", help="first day checked (ISO 8601; default: the first day with a manifest)"
    )
    reconcile.add_argument(
        "--until", help="last day checked, included (default: the last committed day)"
    )
    reconcile.add_argument(
        "--counts-only",
        action="store_true",
        help="compare row counts only; stream a day's rows only when its count differs",
    )
    reconcile.add_argument(
        "--repair",
        action="store_true",
        help="merge the late rows into their day's shards and rewrite its manifest",
    )
    with_output(reconcile)
    with_progress(reconcile)

    get = command("get", "write one archived file's bytes", cmd_get)
    get.add_argument("uid")
    get.add_argument("--created-at", required=True, help="the row's created_at (ISO 8601)")
    get.add_argument("-o", "--output", help="output file (default: stdout)")
    get.add_argument(
        "--allow-unverified",
        action="store_true",
        help="write an entry without a checksum (other DES writers), with a warning",
    )

    manifest = command(
        "manifest", "show a committed day's manifest, or rebuild it (--rebuild)", cmd_manifest
    )
    manifest.add_argument("day", metavar="DAY", help="the UTC day, YYYYMMDD or YYYY-MM-DD")
    manifest.add_argument(
        "--rebuild",
        action="store_true",
        help="write it from the published shards and the source rows (archives from before "
        "manifests; a damaged manifest)",
    )
    with_output(manifest)

    audit = command(
        "audit", "where an archived file is and since when (manifest + index)", cmd_audit
    )
    audit.add_argument("uid")
    audit.add_argument("--created-at", required=True, help="the row's created_at (ISO 8601)")
    audit.add_argument("--json", action="store_true", help="print JSON")

    verify = command("verify", "check every row below the watermark is in the archive", cmd_verify)
    verify.add_argument("--since", help="start of the checked range (default: watermark.initial)")
    verify.add_argument(
        "--deep", action="store_true", help="read every file back and verify checksums"
    )
    with_output(verify)
    with_progress(verify)

    serve = command("serve", "serve archived files over HTTP (deswm[serve])", cmd_serve)
    serve.add_argument("--host", help="address to listen on (default: serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: serve.port, 8080)")
    serve.add_argument(
        "--workers", type=int, help="server processes sharing the port (default: serve.workers, 1)"
    )
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

    completion = command(
        "completion", "print a shell completion script (deswm[completion])", cmd_completion
    )
    completion.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    return parser


def _setup_logging(args: argparse.Namespace, log_format: LogFormat | None = None) -> None:
    verbose = args.verbose or args.debug
    level = logging.DEBUG if verbose else logging.WARNING if args.quiet else logging.INFO
    setup_logging(level, args.log_format or log_format or "text", tracebacks=args.debug)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deswm`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _setup_logging(args)
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (``deswm stats | head``): nothing more to say to it.
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE
    except ConfigError as exc:
        _report(args, exc, "configuration error: ")
        return EXIT_USAGE
    except DeswmError as exc:
        _report(args, exc, f"{type(exc).__name__}: ")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("deswm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an unexpected OS error: still one line by default
        _report(args, exc, f"unexpected {type(exc).__name__}: ", hint="--debug shows where")
        return EXIT_FAILURE


def _report(
    args: argparse.Namespace, exc: BaseException, prefix: str, *, hint: str | None = None
) -> None:
    """An error as one line on stderr (``--debug``: with its traceback first)."""
    if args.debug:
        print(redact("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
    line = " ".join(redact(str(exc)).split())
    suffix = f" ({hint})" if hint and not args.debug else ""
    print(f"deswm: {prefix}{line}{suffix}", file=sys.stderr)


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null so flushing it again at exit cannot fail (the recipe of
    the Python docs for SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
