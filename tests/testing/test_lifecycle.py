"""The lifecycle state machine (deswm.testing._lifecycle) on the in-memory components.

Any interleaving of run, replay, errors retry, purge, changed and deleted files and
damaged objects, over tables with duplicate uids, shared locations and years 1 and 999:
every row below the watermark is archived with its own bytes or listed, and no purge
deletes a file the archive cannot give back (G1, G8, G14-G17).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from deswm.testing._lifecycle import LifecycleMachine

EXAMPLES = int(os.environ.get("DESWM_PROPERTY_EXAMPLES", "25")) * 8

TestLifecycle = LifecycleMachine.TestCase
TestLifecycle.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=14,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
