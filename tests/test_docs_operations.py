"""docs/operations.md: its examples parse, and every metric it names exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import prometheus_client
import yaml

from deswm._metrics import PrometheusObserver
from deswm._orchestrator import CycleObserver
from test_metrics import orchestrator

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_examples_parse() -> None:
    for block in blocks("json"):
        assert json.loads(block)["event"] == "bucket_committed"
    docs = [doc for block in blocks("yaml") for doc in yaml.safe_load_all(block)]
    probe = next(doc for doc in docs if isinstance(doc, dict) and "containers" in doc)
    rules = next(doc for doc in docs if isinstance(doc, dict) and "groups" in doc)
    assert (
        "find /tmp/health/deswm -mmin"
        in probe["containers"][0]["livenessProbe"]["exec"]["command"][2]
    )
    assert {rule["alert"] for rule in rules["groups"][0]["rules"]} >= {
        "DeswmWatermarkBehind",
        "DeswmNoRecentSuccess",
        "DeswmCyclesFailing",
    }


def test_every_metric_named_in_the_guide_is_exported(tmp_path: Path) -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics = PrometheusObserver(registry, plan=None)
    orch = orchestrator(tmp_path, metrics)
    orch.observers = (metrics, CycleObserver())
    orch.run_cycle()
    metrics.cycle_failed(orch.key, RuntimeError("for the failure series"))
    exported = set()
    for family in registry.collect():  # a labelled metric never set has no samples yet
        exported |= {family.name, f"{family.name}_total"} | {s.name for s in family.samples}
    named = set(re.findall(r"\b(des_[a-z_]+)", DOC.read_text(encoding="utf-8")))
    assert named, "the guide names the metrics"
    assert named <= exported, named - exported
