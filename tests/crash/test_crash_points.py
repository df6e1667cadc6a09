"""Kill a real process at every checkpoint, rerun, and prove nothing was lost.

Each case runs the crash steps of a scenario in a child process with
``DESWM_CRASH_AT=<point>:<n>``, requires that the child died by SIGKILL, checks what
the kill left behind (G11, G1, G4/G5), reruns to completion, and compares the final
objects with a clean run on a fresh destination (G2/G3). See docs/crash-tests.md.
"""

from __future__ import annotations

import signal

import pytest
from crash_harness import (
    LOCAL_ONLY_POINTS,
    SCENARIOS,
    STATS,
    Worlds,
    check_committed_manifests,
    check_no_loss,
    check_visible_objects,
    check_watermark_audit,
    differing_objects,
    progress_of,
    worlds_fixture,  # noqa: F401 (the fixture)
)

from deswm._checkpoints import POINTS

BACKENDS = {"sqlite-local": ("sqlite", "local"), "postgresql-s3": ("postgresql", "s3")}

Occurrence = int | str  # an n, or "last": the last time the clean run reaches the point
Case = tuple[str, Occurrence, bool]  # point, occurrence, also on PostgreSQL + S3
# Every case runs on SQLite + local disk. On PostgreSQL + S3 (about 10 ms per request to
# moto) each point that exists there is killed once, in the scenario where it matters most.

FRESH: tuple[Case, ...] = (
    ("cycle.started", 1, True),
    ("store.initialize.in_transaction", 1, True),
    ("source.between_pages", 1, False),
    ("source.between_pages", 5, True),
    ("packer.after_add", 1, False),
    ("packer.after_add", 5, True),
    ("big_file.before_write", 1, True),
    ("big_file.after_write", 2, False),
    ("shardio.create_only.after_fsync", 1, False),
    ("shardio.create_only.after_link", 2, False),
    ("bucket.before_publish", 2, True),
    ("lane.before_publish", 1, False),
    ("lane.before_publish", 4, True),
    ("packer.before_group", 1, False),
    ("packer.before_group", 5, True),
    ("packer.part.mid_write", 1, False),
    ("packer.part.mid_write", 5, False),
    ("shardio.publish.after_write", 1, False),
    ("shardio.publish.after_fsync", 2, False),
    ("shardio.publish.after_rename", 5, False),
    ("packer.after_part", 2, False),
    ("packer.before_dir_sync", 1, True),
    ("lane.after_publish", 1, True),
    ("lane.after_publish", 3, False),
    ("bucket.after_publish", 2, True),
    ("bucket.after_manifest", 2, True),
    ("store.advance.in_transaction", 1, False),
    ("store.advance.after_commit", 2, True),
    ("bucket.after_commit", "last", True),
)
"""Kills in the fresh scenario (one cycle over three days on an empty store)."""

REPLAY: tuple[Case, ...] = (
    ("store.set.in_transaction", 1, True),
    ("cycle.started", 1, False),
    ("source.between_pages", 2, False),
    ("packer.after_add", 5, False),
    ("big_file.before_write", 1, False),
    ("big_file.after_write", 1, True),
    ("shardio.create_only.after_fsync", 1, False),
    ("shardio.create_only.after_link", 1, False),
    ("bucket.before_publish", 1, False),
    ("packer.merge.before_write", 1, False),
    ("packer.merge.before_write", 5, True),
    ("packer.part.mid_write", 2, True),
    ("shardio.publish.after_write", 1, False),
    ("shardio.publish.after_fsync", 1, False),
    ("shardio.publish.after_rename", 2, False),
    ("packer.after_part", 1, True),
    ("packer.before_delete", 1, True),
    ("packer.before_dir_sync", 2, False),
    ("packer.before_group", 1, False),
    ("lane.before_publish", 2, False),
    ("lane.after_publish", 2, True),
    ("bucket.after_publish", 1, False),
    ("bucket.after_manifest", 1, True),
    ("store.advance.in_transaction", 2, True),
    ("store.advance.after_commit", 1, False),
    ("bucket.after_commit", 2, False),
)
"""Kills in the replay scenario (set back two days, merge, keep, delete, new days)."""

LATE: tuple[Case, ...] = (
    ("packer.merge.before_write", 1, False),
    ("packer.part.mid_write", 1, False),
    ("packer.after_part", 1, True),
    ("packer.after_part", "last", False),
    ("reconcile.after_publish", 1, True),
    ("reconcile.after_publish", "last", False),
    ("reconcile.after_manifest", 1, True),
)
"""Kills in the late scenario (late rows below the watermark, reconcile --repair): inside
the merge, after a day's shards are published and before its manifest is rewritten, and
after the manifest."""


def cases() -> list[tuple[str, str, str, Occurrence]]:
    out = []
    for backend in BACKENDS:
        for scenario, table in (("fresh", FRESH), ("replay", REPLAY), ("late", LATE)):
            for point, n, on_s3 in table:
                if backend == "sqlite-local" or on_s3:
                    out.append((backend, scenario, point, n))
    return out


CASES = cases()


def test_every_point_is_killed_on_every_backend_where_it_exists() -> None:
    for backend in BACKENDS:
        covered = {point for b, _, point, _ in CASES if b == backend}
        expected = set(POINTS) - (LOCAL_ONLY_POINTS if backend != "sqlite-local" else set())
        assert covered == expected, f"{backend}: missing {sorted(expected - covered)}"
    assert {p for p in POINTS if p.startswith("shardio.")} == LOCAL_ONLY_POINTS


@pytest.mark.parametrize("backend", BACKENDS)
def test_clean_runs_reach_every_point_the_backend_has(worlds: Worlds, backend: str) -> None:
    """Which points a clean run reaches, per backend: all 28 on local disk; on S3 all but
    the five of the local temp-file publish (an S3 PUT has no temp file, fsync or link)."""
    sql, dest = BACKENDS[backend]
    reached: set[str] = set()
    for scenario in SCENARIOS.values():
        reached |= set(worlds.reference(scenario, sql, dest).counts)
    if backend == "sqlite-local":
        assert reached == set(POINTS)
    else:
        assert reached == set(POINTS) - LOCAL_ONLY_POINTS


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "scenario_name", "point", "n"),
    CASES,
    ids=[f"{b}-{s}-{p}:{n}" for b, s, p, n in CASES],
)
def test_kill_rerun_lose_nothing(
    worlds: Worlds, backend: str, scenario_name: str, point: str, n: Occurrence
) -> None:
    sql, dest = BACKENDS[backend]
    scenario = SCENARIOS[scenario_name]
    reference = worlds.reference(scenario, sql, dest)
    reached = reference.counts.get(point, 0)
    occurrence = reached if n == "last" else int(n)
    if reached < max(occurrence, 1):
        pytest.fail(
            f"{point} is reached {reached} time(s) by a clean run of scenario "
            f"{scenario_name!r} on {backend}, so {point}:{n} cannot be killed: change the "
            f"scenario or the case",
            pytrace=False,
        )

    world = worlds.prepared(scenario, sql, dest)
    run_dir = world.new_run_dir("crash")
    spec = f"{point}:{occurrence}"
    outcome = world.start_child(scenario.crash, run_dir, crash_at=spec).wait()
    assert outcome.returncode == -signal.SIGKILL, (
        f"the child was not killed at {spec}: {outcome.explain()}"
    )

    # Right after the kill, before anything cleans up.
    at_kill = world.watermark()
    verified, temps = check_visible_objects(world)  # G11
    rows = check_no_loss(world, at_kill.position if at_kill else None)  # G1
    check_committed_manifests(world, at_kill.position if at_kill else None)
    check_watermark_audit(world)  # G4/G5 so far
    backdated = world.backdate_temps()
    assert backdated == temps

    # The operator reruns: the remaining steps, no crash.
    world.run(scenario.crash, run_dir / "progress.jsonl")
    assert progress_of(run_dir) == len(scenario.crash)
    final = world.watermark()
    assert final is not None and final.position == scenario.final
    assert world.temp_files() == [], "a later publish must clean leftover temp files"
    objects = world.objects()
    differ = differing_objects(objects, reference.objects)
    assert differ == [], f"G2/G3: objects differ from a clean run's: {differ}"
    # The clean run's objects were verified (G11) and read back (G1) once, so equal bytes
    # carry both over to the rerun's final state.
    updates = check_watermark_audit(world)
    assert updates == reference.updates, (
        f"G4: {updates} committed watermark writes, a clean run makes {reference.updates}"
    )

    STATS.kills += 1
    STATS.reruns += 1
    STATS.rows_checked += rows
    STATS.objects_verified += verified
    STATS.temps_cleaned += backdated
    STATS.points.setdefault(backend, set()).add(point)
    STATS.cases.append(
        {
            "backend": backend,
            "scenario": scenario_name,
            "kill": spec,
            "watermark_at_kill": at_kill.position.isoformat() if at_kill else None,
            "rows_checked_at_kill": rows,
            "objects_at_kill": verified,
            "temp_files_at_kill": temps,
            "child_seconds": round(outcome.seconds, 2),
        }
    )


def test_young_temp_files_survive_a_rerun(worlds: Worlds) -> None:
    """Cleanup only takes temp files older than an hour: a writer still running is safe."""
    scenario = SCENARIOS["fresh"]
    reference = worlds.reference(scenario, "sqlite", "local")
    world = worlds.prepared(scenario, "sqlite", "local")
    run_dir = world.new_run_dir("crash")
    spec = "shardio.publish.after_write:1"
    outcome = world.start_child(scenario.crash, run_dir, crash_at=spec).wait()
    assert outcome.returncode == -signal.SIGKILL, outcome.explain()
    young = world.temp_files()
    assert young, "the kill must leave a temp file"
    world.run(scenario.crash, run_dir / "progress.jsonl")
    assert world.temp_files() == young
    assert differing_objects(world.objects(), reference.objects) == []
