"""Two runners on the same pipeline and partition at once: one wins, nothing is lost.

The races are choreographed (see :func:`crash_harness.conflict_choreography` and
:func:`crash_harness.stale_merge_choreography`): both runners are held at checkpoints
until the other arrives, so both are mid-bucket with the same watermark version, and
the outcome does not depend on timing luck. They run as two threads of this process
and as two processes, on SQLite + a local folder and on PostgreSQL + S3.

Checked afterwards: exactly one runner failed, with a typed ``DeswmError`` whose message
says what happened; the watermark reached the target with exactly one committed write
per bucket (G4, counted by a database trigger); every object is whole (G11); every row
reads back (G1); the objects equal a clean run's (G2/G3).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from crash_driver import Action, Recorder, describe_error
from crash_harness import (
    KEY,
    SCENARIOS,
    STATS,
    Scenario,
    World,
    Worlds,
    check_no_loss,
    check_visible_objects,
    check_watermark_audit,
    conflict_choreography,
    differing_objects,
    stale_merge_choreography,
    worlds_fixture,  # noqa: F401 (the fixture)
)

from deswm._errors import DeswmError

BACKENDS = {"sqlite-local": ("sqlite", "local"), "postgresql-s3": ("postgresql", "s3")}
ACTORS = ("a", "b")


def race_in_threads(
    world: World, steps: Sequence[Any], actions: Mapping[str, Sequence[Action]], where: Path
) -> dict[str, dict[str, Any]]:
    """Both runners as threads of this process; returns each one's outcome."""
    names = {f"runner-{actor}": actor for actor in ACTORS}
    recorder = Recorder(
        choreography_dir=where,
        actions=actions,
        actor_of=lambda: names.get(threading.current_thread().name),
    )
    outcomes: dict[str, dict[str, Any]] = {}

    def runner(actor: str) -> None:
        try:
            outcomes[actor] = {"ok": True, "results": world.run(steps)}
        except Exception as exc:
            outcomes[actor] = describe_error(exc) | {"exception": exc}

    threads = [threading.Thread(target=runner, args=(a,), name=f"runner-{a}") for a in ACTORS]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        recorder.close()
    assert set(outcomes) == set(ACTORS), "a runner thread hung"
    return outcomes


def race_in_processes(
    world: World, steps: Sequence[Any], actions: Mapping[str, Sequence[Action]], where: Path
) -> dict[str, dict[str, Any]]:
    """Both runners as driver processes; returns each one's outcome."""
    choreography = {"dir": str(where), "actions": dict(actions)}
    children = {
        actor: world.start_child(
            steps, world.new_run_dir(f"runner-{actor}"), actor=actor, choreography=choreography
        )
        for actor in ACTORS
    }
    outcomes = {}
    for actor, child in children.items():
        outcome = child.wait()
        assert outcome.result is not None, f"runner {actor} reported nothing: {outcome.explain()}"
        assert outcome.returncode in (0, 3), f"runner {actor}: {outcome.explain()}"
        outcomes[actor] = outcome.result
    return outcomes


RACES = {"threads": race_in_threads, "processes": race_in_processes}
RUNNER_EXECUTOR = "inline"
"""The races are between two runners; their choreographies count each runner's
checkpoints in the order one serial writer reaches them, so each runner packs in-process."""


def check_after_race(world: World, worlds: Worlds, scenario: Scenario, backend: str) -> None:
    sql, dest = BACKENDS[backend]
    reference = worlds.reference(scenario, sql, dest)
    final = world.watermark()
    assert final is not None and final.position == scenario.final
    updates = check_watermark_audit(world)
    assert updates == reference.updates, (
        f"G4: {updates} committed watermark writes for {reference.updates} of a clean run: "
        "a bucket was committed twice or not at all"
    )
    listing = world.listing()
    check_visible_objects(world, listing)
    assert check_no_loss(world, final.position) > 0
    assert world.temp_files() == []
    objects = world.objects(listing)
    differ = differing_objects(objects, reference.objects)
    assert differ == [], f"G2/G3: objects differ from a clean run's: {differ}"


def record_race(backend: str, mode: str, race: str, loser: str, failure: Mapping[str, Any]) -> None:
    error = {k: v for k, v in failure.items() if k != "exception"}
    STATS.races.append(
        {"backend": backend, "mode": mode, "race": race, "loser": loser, "error": error}
    )


def split(outcomes: Mapping[str, Mapping[str, Any]]) -> tuple[str, Mapping[str, Any]]:
    """The loser's name and outcome; exactly one runner must have failed."""
    losers = [actor for actor, outcome in outcomes.items() if not outcome["ok"]]
    assert len(losers) == 1, f"expected exactly one loser: {outcomes}"
    return losers[0], outcomes[losers[0]]


@pytest.mark.slow
@pytest.mark.parametrize("mode", RACES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_runners_commit_the_same_bucket_one_gets_watermark_conflict(
    worlds: Worlds, backend: str, mode: str
) -> None:
    """Both pack and publish the first bucket from the same watermark version, then
    commit at the same moment: the compare-and-set lets exactly one through."""
    scenario = SCENARIOS["fresh"]
    world = worlds.prepared(scenario, *BACKENDS[backend], RUNNER_EXECUTOR)
    where = world.folder / f"race-{mode}"
    where.mkdir()
    outcomes = RACES[mode](world, scenario.crash, conflict_choreography(), where)

    loser, failure = split(outcomes)
    assert failure["error_type"] == "WatermarkConflict", failure
    assert failure["deswm_error"], failure
    message = failure["message"]
    assert f"watermark {KEY} was changed by another runner" in message
    assert "expected version" in message and "run one runner per partition" in message
    check_after_race(world, worlds, scenario, backend)
    record_race(backend, mode, "commit", loser, failure)


@pytest.mark.slow
@pytest.mark.parametrize("mode", RACES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_runner_merging_from_replaced_objects_fails_with_pack_error(
    worlds: Worlds, backend: str, mode: str
) -> None:
    """Both plan the merge of the replayed day from the same published indexes; one
    publishes the whole bucket first, then the other writes from its stale plan: its
    version-pinned reads see the replaced objects and it stops before publishing."""
    scenario = SCENARIOS["replay"]
    world = worlds.prepared(scenario, *BACKENDS[backend], RUNNER_EXECUTOR)
    set_step, cycle_step = scenario.crash
    world.run([set_step])  # the operator's replay, then two runners start
    where = world.folder / f"race-{mode}"
    where.mkdir()
    outcomes = RACES[mode](world, [cycle_step], stale_merge_choreography(), where)

    loser, failure = split(outcomes)
    assert loser == "b", f"runner a published first, so b must be the one to fail: {outcomes}"
    assert failure["error_type"] == "PackError", failure
    assert failure["deswm_error"], failure
    message = failure["message"]
    assert re.search(r"\d{8}_[0-9A-F]+_\d{4}\.des: the (file|object)", message), message
    assert "Another writer is publishing this group; run one runner per partition" in message
    exc = failure.get("exception")
    assert exc is None or isinstance(exc, DeswmError)
    check_after_race(world, worlds, scenario, backend)
    record_race(backend, mode, "stale merge", loser, failure)
