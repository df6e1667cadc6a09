"""Starting scenario children from the parent and collecting what they print."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.child import MARKER

__all__ = ["BenchError", "Child", "run_child"]

REPO = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """A scenario child failed."""


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), path) if p)
    env.pop("DESWM_CRASH_AT", None)
    env.update(extra or {})
    return env


class Child:
    """One scenario running in its own process."""

    def __init__(self, scenario: str, params: dict[str, Any], *, timeout: float = 3600) -> None:
        self.scenario = scenario
        self.timeout = timeout
        with tempfile.NamedTemporaryFile(
            "w", prefix=f"bench-{scenario}-", suffix=".json", delete=False
        ) as handle:
            json.dump(params, handle)
        self._params = handle.name
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.child", scenario, self._params],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def result(self) -> dict[str, Any]:
        try:
            out, err = self.process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            raise BenchError(f"{self.scenario} timed out after {self.timeout} s") from None
        finally:
            os.unlink(self._params)
        elapsed = time.perf_counter() - self.started
        if self.process.returncode != 0:
            tail = "\n".join(err.strip().splitlines()[-25:])
            raise BenchError(f"{self.scenario} exited {self.process.returncode}:\n{tail}")
        for line in reversed(out.splitlines()):
            if line.startswith(MARKER):
                result: dict[str, Any] = json.loads(line[len(MARKER) :])
                result["process_seconds"] = round(elapsed, 3)
                return result
        raise BenchError(f"{self.scenario} printed no result:\n{out[-2000:]}\n{err[-2000:]}")


def run_child(scenario: str, params: dict[str, Any], *, timeout: float = 3600) -> dict[str, Any]:
    return Child(scenario, params, timeout=timeout).result()
