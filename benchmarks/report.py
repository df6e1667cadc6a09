"""The figures P1 to P8 (performance.md), computed from the runs, and the printed table.

Every figure is a row: ``id``, ``figure``, ``deswm``, ``baseline``, ``ratio``, ``target``,
``met`` (``True``/``False``, or ``None`` when the figure was not measured or has no
target), ``unit`` and ``note``. Rows without a P-number are context (the other
baselines, output sizes, the total-time ratio on the database figures).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["figures", "format_table"]

Row = dict[str, Any]


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _row(
    ident: str,
    figure: str,
    deswm: float | None,
    baseline: float | None,
    ratio: float | None,
    target: str,
    check: Callable[[float], bool] | None,
    unit: str = "",
    note: str = "",
) -> Row:
    met = None if ratio is None or check is None else bool(check(ratio))
    return {
        "id": ident,
        "figure": figure,
        "deswm": deswm,
        "baseline": baseline,
        "ratio": ratio,
        "target": target,
        "met": met,
        "unit": unit,
        "note": note,
    }


def _wal_bytes(run: dict[str, Any]) -> float | None:
    """The median WAL bytes of a run's repeats (one run: its own figure)."""
    values = sorted(v for v in run.get("all_wal_bytes") or [run.get("wal_bytes")] if v is not None)
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def _reported(
    figure: str,
    deswm: float | None,
    baseline: float | None,
    unit: str,
    *,
    inverse: bool = False,
    note: str = "",
) -> Row:
    """A context row without a target; its ratio is ``deswm / baseline`` (or the
    inverse, for figures named "baseline / deswm")."""
    ratio = _ratio(baseline, deswm) if inverse else _ratio(deswm, baseline)
    return _row("", figure, deswm, baseline, ratio, "(reported)", None, unit, note)


def _seconds(run: dict[str, Any] | None) -> float | None:
    return None if run is None else float(run["seconds"])


def _cpu_per_file_us(run: dict[str, Any] | None) -> tuple[float, dict[str, float]] | None:
    """The least process CPU time (user + system, every thread) per file of a run's
    repeats, in microseconds, with that repeat's CPU times: the figure is CPU, and the
    fastest run by wall time need not be the one that used the least."""
    if run is None or not run.get("files") or "cpu" not in run:
        return None
    cpu = min(run.get("all_cpu") or [run["cpu"]], key=lambda c: c["user"] + c["system"])
    return (cpu["user"] + cpu["system"]) / run["files"] * 1e6, cpu


def figures(runs: dict[str, Any]) -> list[Row]:
    """Rows for every figure the runs allow."""
    rows: list[Row] = []
    native = runs.get("native")
    deswm = runs.get("deswm_sqlite")
    loop = runs.get("python_loop")
    per_record = runs.get("per_record_sqlite")

    p1 = _ratio(_seconds(deswm), _seconds(native))
    rows.append(
        _row(
            "P1",
            "full cycle / native (s), SQLite, local, zstd-3",
            _seconds(deswm),
            _seconds(native),
            p1,
            "<= 2.0 (stretch 1.5)",
            lambda r: r <= 2.0,
            "s",
            "stretch met" if p1 is not None and p1 <= 1.5 else "",
        )
    )
    engine = runs.get("deswm_sqlite_engine")
    if engine is not None:
        lanes = engine.get("lanes", "?")
        rows.append(
            _reported(
                f"full cycle on the engine, {lanes} lanes in processes / native (s)",
                _seconds(engine),
                _seconds(native),
                "s",
            )
        )
        rows.append(
            _reported(
                f"scaling: {lanes} lanes / {deswm.get('lanes', 1) if deswm else '?'} lane (s)",
                _seconds(engine),
                _seconds(deswm),
                "s",
            )
        )
    dask = runs.get("deswm_sqlite_engine_dask")
    if dask is not None:
        rows.append(
            _reported(
                f"full cycle on the engine, {dask.get('lanes', '?')} Dask workers / native (s)",
                _seconds(dask),
                _seconds(native),
                "s",
            )
        )
        if engine is not None:
            rows.append(
                _reported(
                    "Dask LocalCluster / process pool, same lanes (s; target within 15 %)",
                    _seconds(dask),
                    _seconds(engine),
                    "s",
                )
            )
    lane, loop_cpu = _cpu_per_file_us(runs.get("lane")), _cpu_per_file_us(loop)
    rows.append(
        _row(
            "P1b",
            "CPU per file: one packing lane / Python loop (us, user+sys)",
            None if lane is None else lane[0],
            None if loop_cpu is None else loop_cpu[0],
            None if lane is None or loop_cpu is None else _ratio(lane[0], loop_cpu[0]),
            "<= 1.3",
            lambda r: r <= 1.3,
            "us",
            "not run"
            if lane is None
            else f"lane cpu {lane[1]}, loop cpu {loop_cpu and loop_cpu[1]}",
        )
    )
    variant = runs.get("deswm_sqlite_variant")
    if variant is not None:
        bits = variant.get("n_bits", "?")
        rows.append(
            _reported(
                f"full cycle with n_bits {bits} / native (s): {variant['shards']:,} shards",
                _seconds(variant),
                _seconds(native),
                "s",
            )
        )
    partitions = runs.get("partitions")
    wall = None if partitions is None else float(partitions["seconds"])
    rows.append(
        _row(
            "P2",
            "2 partitions in 2 processes / native (s)",
            wall,
            _seconds(native),
            _ratio(wall, _seconds(native)),
            "<= 1.1",
            lambda r: r <= 1.1,
            "s",
        )
    )
    if partitions is not None and partitions.get("source_rows"):
        fetched = max(partitions["source_rows"])
        rows.append(
            _row(
                "",
                "P2 rows fetched by the busiest partition / window rows (filter in SQL)",
                fetched,
                partitions["window_rows"],
                _ratio(fetched, partitions["window_rows"]),
                "~ 1/K = 0.5",
                lambda r: r <= 0.6,
                "rows",
            )
        )
    python = runs.get("partitions_python_filter")
    if python is not None and wall is not None:
        rows.append(
            _reported(
                "2 partitions, filter in SQL / filter in Python (s)",
                wall,
                float(python["seconds"]),
                "s",
                note=f"rows fetched in Python mode: {python.get('source_rows')}",
            )
        )

    deswm_pg, per_record_pg = runs.get("deswm_postgresql"), runs.get("per_record_postgresql")
    if deswm_pg and per_record_pg:
        d_db, p_db = deswm_pg["sql"]["db_s"], per_record_pg["sql"]["db_s"]
        rows.append(
            _row(
                "P3",
                "database time per-record / deswm (s), PostgreSQL",
                d_db,
                p_db,
                _ratio(p_db, d_db),
                ">= 10",
                lambda r: r >= 10,
                "s",
                "execute+fetch+commit; execute only: "
                f"{_fmt(_ratio(per_record_pg['sql']['execute_s'], deswm_pg['sql']['execute_s']))}x",
            )
        )
        rows.append(
            _reported(
                "total time per-record / deswm (s), PostgreSQL",
                _seconds(deswm_pg),
                _seconds(per_record_pg),
                "s",
                inverse=True,
            )
        )
        d_wal, p_wal = _wal_bytes(deswm_pg), _wal_bytes(per_record_pg)
        rows.append(
            _row(
                "P4",
                "WAL bytes per-record / deswm, PostgreSQL",
                d_wal,
                p_wal,
                _ratio(p_wal, d_wal),
                ">= 10,000",
                lambda r: r >= 10_000,
                "B",
                f"median of runs (deswm {deswm_pg.get('all_wal_bytes')}, per-record "
                f"{per_record_pg.get('all_wal_bytes')}); source rows updated: deswm "
                f"{deswm_pg.get('source_rows_updated')}, "
                f"per-record {per_record_pg.get('source_rows_updated')}",
            )
        )
    else:
        rows.append(
            _row(
                "P3",
                "database time per-record / deswm, PostgreSQL",
                None,
                None,
                None,
                ">= 10",
                None,
                "s",
                "not run (use --db postgresql)",
            )
        )
        rows.append(
            _row(
                "P4",
                "WAL bytes per-record / deswm, PostgreSQL",
                None,
                None,
                None,
                ">= 10,000",
                None,
                "B",
                "not run (use --db postgresql)",
            )
        )

    scaling = {int(run["rows"]): run for run in runs.get("scaling", [])}
    sizes = sorted(scaling)
    if len(sizes) >= 2:
        largest, middle, smallest = sizes[-1], sizes[-2], sizes[0]
        rss_big, rss_mid = scaling[largest]["peak_rss_mib"], scaling[middle]["peak_rss_mib"]
        p5 = _ratio(rss_big, rss_mid)
        rows.append(
            _row(
                "P5",
                f"peak RSS at {largest:,} / {middle:,} rows (MiB)",
                rss_big,
                rss_mid,
                p5,
                "<= 1.3 and < 300 MiB",
                None,
                "MiB",
            )
        )
        rows[-1]["met"] = None if p5 is None else bool(p5 <= 1.3 and rss_big < 300)
        cost_big = scaling[largest]["us_per_file"]
        cost_small = scaling[smallest]["us_per_file"]
        rows.append(
            _row(
                "P6",
                f"per-file cost at {largest:,} / {smallest:,} rows (us)",
                cost_big,
                cost_small,
                _ratio(cost_big, cost_small),
                "<= 1.2",
                lambda r: r <= 1.2,
                "us",
            )
        )
    else:
        rows.append(
            _row(
                "P5",
                "peak RSS large / medium series",
                None,
                None,
                None,
                "<= 1.3 and < 300 MiB",
                None,
                "MiB",
                "no scaling series",
            )
        )
        rows.append(
            _row(
                "P6",
                "per-file cost large / small series",
                None,
                None,
                None,
                "<= 1.2",
                None,
                "us",
                "no scaling series",
            )
        )

    s3 = (runs.get("retrieval") or {}).get("s3")
    if s3 and "cold_requests_max" in s3:
        cold, warm = s3["cold_requests_max"], s3["warm_requests_max"]
        rows.append(
            _row(
                "P7",
                "S3 get requests: cold / warm (max over gets)",
                cold,
                warm,
                None,
                "<= 3 / 1",
                None,
                "req",
                f"cold {s3['cold_ms_median']} ms, warm {s3['warm_ms_median']} ms (moto)",
            )
        )
        rows[-1]["met"] = bool(cold <= 3 and warm <= 1)
    else:
        rows.append(
            _row(
                "P7",
                "S3 get requests: cold / warm",
                None,
                None,
                None,
                "<= 3 / 1",
                None,
                "req",
                "not run",
            )
        )

    stats = runs.get("pending_stats")
    if stats:
        rows.append(
            _row(
                "P8",
                f"pending stats on {stats['rows']:,} rows: statements / best s",
                stats["statements"],
                stats["seconds_best"],
                None,
                "1 statement; < 1 s",
                None,
                "",
                f"first run {stats['seconds_first']} s",
            )
        )
        rows[-1]["met"] = bool(stats["statements"] == 1 and stats["seconds_best"] < 1.0)
    else:
        rows.append(
            _row("P8", "pending stats", None, None, None, "1 statement; < 1 s", None, "", "not run")
        )

    # Context: the other baselines and sizes.
    rows.append(
        _reported(
            "Python loop / native (s)",
            _seconds(loop),
            _seconds(native),
            "s",
        )
    )
    rows.append(
        _reported(
            "full cycle / Python loop (s)",
            _seconds(deswm),
            _seconds(loop),
            "s",
        )
    )
    if deswm and per_record:
        rows.append(
            _reported(
                "database time per-record / deswm (s), SQLite",
                deswm["sql"]["db_s"],
                per_record["sql"]["db_s"],
                "s",
                inverse=True,
            )
        )
        rows.append(
            _reported(
                "total time per-record / deswm (s), SQLite",
                _seconds(deswm),
                _seconds(per_record),
                "s",
                inverse=True,
            )
        )
    if deswm and native:
        rows.append(
            _reported(
                "output bytes / native",
                deswm["bytes_out"],
                native["bytes_out"],
                "B",
                note="per-file zstd frames vs one stream",
            )
        )
        rows.append(
            _reported(
                "peak RSS of the full cycle (MiB)",
                deswm["peak_rss_mib"],
                None,
                "MiB",
            )
        )
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 0.01 else f"{value:.2f}"
    return str(value)


def format_table(rows: list[Row]) -> str:
    """A Markdown table: figure, deswm, baseline, ratio, target, met?"""
    header = ["id", "figure", "deswm", "baseline", "ratio", "target", "met?"]
    lines = [header]
    for row in rows:
        met = "-" if row["met"] is None else ("yes" if row["met"] else "NO")
        if row["note"] and row["met"] is None and row["deswm"] is None:
            met = row["note"]
        lines.append(
            [
                row["id"],
                row["figure"],
                _fmt(row["deswm"]),
                _fmt(row["baseline"]),
                _fmt(row["ratio"]),
                row["target"],
                met,
            ]
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = []
    for number, line in enumerate(lines):
        out.append(
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        )
        if number == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)
