"""Run one scenario in this (fresh) process: ``python -m benchmarks.child NAME PARAMS.json``.

Prints one line, ``BENCH-RESULT <json>``, with what the scenario measured; its own peak
RSS is read from ``/proc/self/status`` inside the scenario, so nothing of the parent
leaks into it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MARKER = "BENCH-RESULT "


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m benchmarks.child SCENARIO PARAMS.json", file=sys.stderr)
        return 2
    from benchmarks.scenarios import SCENARIOS

    name, params_path = args
    params = json.loads(Path(params_path).read_text())
    result = SCENARIOS[name](params)
    print(MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
