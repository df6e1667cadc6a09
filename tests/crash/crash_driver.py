"""The child side of the crash harness: run the steps of a scenario from a config file.

Run as a script (``python crash_driver.py PLAN.json``) it is the process the crash tests
kill: with ``DESWM_CRASH_AT="<point>:<n>"`` in its environment it SIGKILLs itself the
n-th time it reaches ``<point>`` (see :mod:`deswm._checkpoints`). The same functions run
in the test process for clean reference runs and for reruns after a kill.

A plan is a JSON object::

    {"config": "/tmp/.../deswm.toml",
     "steps": [{"op": "set", "position": "2024-05-11T00:00:00+00:00", "reason": "replay"},
               {"op": "cycle", "now": "2024-05-16T09:00:00+00:00"}],
     "progress": "/tmp/.../progress.jsonl",   # one line per finished step (resume point)
     "counts": "/tmp/.../counts.json",        # checkpoint counts, written at the end
     "result": "/tmp/.../result.json",        # what happened: ok, or the error raised
     "actor": "a",                            # optional: name in a choreography
     "choreography": {"dir": "...", "actions": {"a": [...], "b": [...]}}}

A choreography makes races between two runners real instead of timing luck: at the
n-th time an actor reaches a point it creates a signal file and waits until the signal
files it names exist (files work across threads and processes alike).

Exit codes: 0 all steps done; 3 a :class:`~deswm._errors.DeswmError` was raised; 4 any
other exception. A killed child has no exit code: ``returncode == -9``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict

from deswm import _checkpoints
from deswm._config import load_config
from deswm._errors import DeswmError
from deswm._model import WatermarkKey

Step = Mapping[str, str]
"""``{"op": "cycle", "now": ISO}`` or ``{"op": "set", "position": ISO, "reason": TEXT}``."""

EXIT_DESWM_ERROR = 3
EXIT_OTHER_ERROR = 4
RENDEZVOUS_TIMEOUT = 60.0


class Action(TypedDict):
    """At the ``n``-th arrival of an actor at ``at``: create ``signal``, wait for ``wait``."""

    at: str
    n: int
    signal: str
    wait: list[str]


class ChoreographyTimeout(RuntimeError):
    """A runner waited for a peer that never arrived (the scenario is broken)."""


class Recorder:
    """Counts every checkpoint reached and plays a choreography (thread-safe).

    Installs one hook per point in :data:`deswm._checkpoints.POINTS`; call
    :meth:`close` to remove them. ``actor_of`` names the actor of the calling thread
    (``None``: no choreography for this thread).
    """

    def __init__(
        self,
        *,
        choreography_dir: Path | None = None,
        actions: Mapping[str, Sequence[Action]] | None = None,
        actor_of: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.counts: dict[str, int] = {}
        self._per_actor: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._dir = choreography_dir
        self._actions = {actor: list(steps) for actor, steps in (actions or {}).items()}
        self._actor_of = actor_of
        for point in _checkpoints.POINTS:
            _checkpoints.install(point, self._reached)

    def _reached(self, point: str, _count: int) -> None:
        actor = self._actor_of()
        with self._lock:
            self.counts[point] = self.counts.get(point, 0) + 1
            if actor is None:
                return
            mine = self._per_actor[(actor, point)] = self._per_actor.get((actor, point), 0) + 1
        for action in self._actions.get(actor, ()):
            if action["at"] == point and action["n"] == mine:
                self._play(actor, action)

    def _play(self, actor: str, action: Action) -> None:
        assert self._dir is not None
        (self._dir / action["signal"]).touch()
        deadline = time.monotonic() + RENDEZVOUS_TIMEOUT
        while not all((self._dir / name).exists() for name in action["wait"]):
            if time.monotonic() > deadline:
                raise ChoreographyTimeout(
                    f"actor {actor} waited {RENDEZVOUS_TIMEOUT}s at {action['at']} for "
                    f"{action['wait']}"
                )
            time.sleep(0.005)

    def close(self) -> None:
        _checkpoints.uninstall()


def run_step(config_path: str | Path, step: Step) -> dict[str, Any]:
    """Run one step with components built from the config file; return a summary."""
    config = load_config(config_path)
    if step["op"] == "cycle":
        now = datetime.fromisoformat(step["now"])
        orchestrator = config.build_orchestrator(clock=lambda: now)
        try:
            result = orchestrator.run_cycle()
        finally:
            orchestrator.close()
            _dispose(orchestrator.source, orchestrator.store)
        return {
            "op": "cycle",
            "buckets": result.buckets_committed,
            "files": result.files,
            "kept": result.kept,
            "watermark": result.watermark_after.isoformat(),
        }
    if step["op"] == "set":
        source_engine, store_engine = config.build_engines()
        try:
            store = config.build_store(store_engine)
            written = store.set(
                WatermarkKey(config.pipeline),
                datetime.fromisoformat(step["position"]),
                reason=step["reason"],
            )
        finally:
            source_engine.dispose()
            store_engine.dispose()
        return {"op": "set", "watermark": written.position.isoformat()}
    if step["op"] == "reconcile":
        job = config.build_reconcile_job()
        try:
            report = job.run(repair=True)
        finally:
            job.orchestrator.close()
            _dispose(job.orchestrator.source, job.orchestrator.store)
        return {
            "op": "reconcile",
            "late": report.late_rows,
            "repaired": sum(1 for bucket in report.buckets if bucket.repaired),
        }
    raise ValueError(f"unknown step {step!r}")


def _dispose(*components: Any) -> None:
    for component in components:
        engine = getattr(component, "engine", None)
        if engine is not None:
            engine.dispose()


def done_steps(progress: Path) -> int:
    """How many steps of a plan finished (the lines of its progress file)."""
    if not progress.exists():
        return 0
    return len(progress.read_text(encoding="utf-8").splitlines())


def run_steps(
    config_path: str | Path, steps: Sequence[Step], progress: Path | None = None
) -> list[dict[str, Any]]:
    """Run ``steps`` in order, skipping those the progress file marks done."""
    start = done_steps(progress) if progress is not None else 0
    results = []
    for number, step in enumerate(steps):
        if number < start:
            continue
        results.append(run_step(config_path, step))
        if progress is not None:
            with progress.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": number, **results[-1]}) + "\n")
    return results


def describe_error(exc: BaseException) -> dict[str, Any]:
    """What a test needs to judge an error: its type, message and family."""
    return {
        "ok": False,
        "error_type": type(exc).__name__,
        "error_module": type(exc).__module__,
        "message": str(exc),
        "deswm_error": isinstance(exc, DeswmError),
    }


def main(argv: Sequence[str]) -> int:
    plan = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    choreography = plan.get("choreography") or {}
    actor = plan.get("actor")
    recorder = Recorder(
        choreography_dir=Path(choreography["dir"]) if choreography else None,
        actions=choreography.get("actions"),
        actor_of=lambda: actor,
    )
    outcome: dict[str, Any]
    code = 0
    try:
        results = run_steps(plan["config"], plan["steps"], Path(plan["progress"]))
        outcome = {"ok": True, "results": results}
    except DeswmError as exc:
        outcome, code = describe_error(exc), EXIT_DESWM_ERROR
    except Exception as exc:
        outcome, code = describe_error(exc), EXIT_OTHER_ERROR
    finally:
        recorder.close()
    Path(plan["counts"]).write_text(json.dumps(recorder.counts), encoding="utf-8")
    Path(plan["result"]).write_text(json.dumps(outcome), encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
