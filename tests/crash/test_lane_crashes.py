"""Kill a lane's worker process before or after its publish: the cycle fails typed, the
bucket is not committed, and the next run archives everything (nothing lost).

The runner is a real child process with ``[run] executor = "processes"``; its worker
processes inherit ``DESWM_CRASH_AT`` and SIGKILL themselves at a ``lane.*`` point, which
the coordinator never reaches itself. After the child exits the same checks as after a
killed runner run (G11, G1, G4/G5), then a clean rerun must leave exactly a clean run's
objects (G2/G3). See docs/crash-tests.md.
"""

from __future__ import annotations

import pytest
from crash_harness import (
    SCENARIOS,
    Worlds,
    check_no_loss,
    check_visible_objects,
    check_watermark_audit,
    differing_objects,
    progress_of,
    worlds_fixture,  # noqa: F401 (the fixture)
)

from deswm._errors import LaneError

CASES = [
    ("fresh", "lane.before_publish"),
    ("fresh", "lane.after_publish"),
    ("replay", "lane.before_publish"),
    ("replay", "lane.after_publish"),
]


@pytest.mark.parametrize(("scenario_name", "point"), CASES, ids=[f"{s}-{p}" for s, p in CASES])
def test_a_killed_lane_process_fails_the_cycle_typed_and_loses_nothing(
    worlds: Worlds, scenario_name: str, point: str
) -> None:
    scenario = SCENARIOS[scenario_name]
    reference = worlds.reference(scenario, "sqlite", "local")
    world = worlds.prepared(scenario, "sqlite", "local", "processes")
    run_dir = world.new_run_dir("lane-crash")
    outcome = world.start_child(scenario.crash, run_dir, crash_at=f"{point}:1").wait()

    # The runner itself survived and reported a typed error naming bucket and lane.
    assert outcome.returncode == 3, outcome.explain()
    assert outcome.result is not None
    assert outcome.result["error_type"] == LaneError.__name__, outcome.explain()
    assert "BrokenProcessPool" in outcome.result["message"]
    assert "Nothing was committed for this bucket" in outcome.result["message"]
    at_kill = world.watermark()
    assert at_kill is not None and at_kill.position < scenario.final
    check_visible_objects(world)  # G11: what the dead lane published is whole
    check_no_loss(world, at_kill.position)  # G1
    check_watermark_audit(world)  # G4/G5

    # The operator reruns: the rest of the steps, no crash, lanes in processes again.
    world.run(scenario.crash, run_dir / "progress.jsonl")
    assert progress_of(run_dir) == len(scenario.crash)
    final = world.watermark()
    assert final is not None and final.position == scenario.final
    assert differing_objects(world.objects(), reference.objects) == []  # G2/G3
    assert check_watermark_audit(world) == reference.updates
