"""observability.metrics: what a scrape shows of the gauges that aren't plain ones."""

from __future__ import annotations

import importlib.metadata

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from replicator.observability.metrics import AbsentUntilSetGauge


def test_a_gauge_absent_until_set_has_no_sample_before_its_first_set():
    registry = CollectorRegistry()
    gauge = AbsentUntilSetGauge("example_timestamp_seconds", "When it happened", registry=registry)
    assert b"example_timestamp_seconds" not in generate_latest(registry)
    gauge.set_to_current_time()
    first = registry.get_sample_value("example_timestamp_seconds")
    assert first is not None and first > 1_700_000_000
    gauge.set(5.0)
    assert registry.get_sample_value("example_timestamp_seconds") == 5.0


def test_build_info_names_the_installed_version():
    version = importlib.metadata.version("replicator")
    assert REGISTRY.get_sample_value("replicator_build_info", {"version": version}) == 1

