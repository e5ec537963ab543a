"""What ships for monitoring (deploy/: the alert rules, their promtool unit tests, the
Grafana dashboard) against promtool and a real sidecar's /metrics.

One real sidecar (``python -m replicator run``, tests/sidecar.py) runs through a
start that matters to an on-call engineer, against real MinIO servers, with a TCP
proxy between it and the source to cut its notification stream (tests/sidecar.py's
TcpProxy): a first reconcile a delete guard refuses, a first success, then changes
the events miss. A real Prometheus scrapes it meanwhile and evaluates the alert
rules. The tests below read the /metrics the sidecar served along the way, and what
Prometheus made of it.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from minio import Minio
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DEST_PASSWORD, DEST_USER, REPO_ROOT, SOURCE_PASSWORD, SOURCE_USER, boto_client, unique_bucket
from tests.servers import HOST, PrometheusServer
from tests.sidecar import Sidecar, TcpProxy, wait_for

DEPLOY = Path(REPO_ROOT) / "deploy"
RULES = DEPLOY / "prometheus-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana-dashboard.json"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    path = shutil.which("promtool")
    # Missing is a failure, never a skip: scripts/lib.sh installs it (Debian's prometheus package).
    assert path, "promtool not found on PATH: run scripts/lib.sh's bootstrap (bash scripts/test.sh) to install it"
    return subprocess.run([path, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False)


# --- the rules and the dashboard, by promtool ----------------------------------------

def test_the_alert_rules_pass_promtool_and_their_unit_tests():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_severity_a_for_and_annotations_for_the_on_call():
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} == {
        "ReplicatorNotReady", "ReplicatorNoSuccessfulReconcile", "ReplicatorReplicationLagHigh",
        "ReplicatorFailuresRising", "ReplicatorDeleteGuardRefused", "ReplicatorListenerDisconnected"}
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        # A guard refusal needs a person at once; everything else must persist first.
        assert ("for" in rule) == (rule["alert"] != "ReplicatorDeleteGuardRefused"), rule["alert"]
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == {rule["alert"] for rule in rules}


def dashboard_panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def queries(panel: dict) -> list[str]:
    """A panel's PromQL, with Grafana's variables as Prometheus would get them."""
    return [target["expr"].replace("$__rate_interval", "2m").replace("$instance", ".*")
            for target in panel["targets"]]


def dashboard_queries() -> list[str]:
    return [expr for panel in dashboard_panels() for expr in queries(panel)]


def test_the_dashboard_takes_its_data_source_as_a_variable_and_its_queries_are_valid_promql(tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in dashboard["panels"]:
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"] and all(t["datasource"] == source for t in panel["targets"]), panel["title"]
    for key in ("id", "title"):
        assert len({panel[key] for panel in dashboard["panels"]}) == len(dashboard["panels"]), key
    # promtool parses PromQL only inside rules: one recording rule per query.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{n}", "expr": expr} for n, expr in enumerate(dashboard_queries())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- a real sidecar's /metrics ---------------------------------------------------------

@dataclass
class Observed:
    refused: str  # /metrics after the first reconcile, which a delete guard refused
    succeeded: str  # after the first success, which made the refused deletions
    repaired: str  # after a reconcile that repaired what the events missed
    succeeded_at: float
    panel_data: dict[str, bool]  # dashboard panel title -> whether a query of it returned a number
    alerts: set[tuple[str, str]]  # (alert name, state) from Prometheus at the end


@pytest.fixture(scope="module")
def observed(minio_source, minio_dest, tmp_path_factory) -> Observed:
    source = Minio(minio_source.host, SOURCE_USER, SOURCE_PASSWORD, secure=False)
    dest = boto_client(minio_dest.endpoint, DEST_USER, DEST_PASSWORD)
    source_bucket, dest_bucket = unique_bucket("mon-src"), unique_bucket("mon-dst")
    source.make_bucket(source_bucket)
    dest.create_bucket(Bucket=dest_bucket)

    def put_source(key: str) -> None:
        source.put_object(source_bucket, key, io.BytesIO(key.encode()), len(key))

    def dest_keys() -> set[str]:
        return {o["Key"] for o in dest.list_objects_v2(Bucket=dest_bucket).get("Contents", [])}

    for i in range(3):  # the destination has objects, the source none: the guard refuses to empty it
        dest.put_object(Bucket=dest_bucket, Key=f"stale/{i}", Body=b"old")
    proxy = TcpProxy(minio_source.port)
    sidecar = Sidecar({
        "S3_SYNC_ACCESS_KEY": DEST_USER, "S3_SYNC_SECRET_KEY": DEST_PASSWORD, "S3_SYNC_BUCKET": dest_bucket,
        "S3_SYNC_ENDPOINT": minio_dest.endpoint, "MINIO_ENDPOINT": proxy.endpoint,
        "MINIO_ACCESS_KEY": SOURCE_USER, "MINIO_SECRET_KEY": SOURCE_PASSWORD, "MINIO_BUCKET": source_bucket,
        "S3_SYNC_RETRY_DELAY": "0.05", "S3_SYNC_CONNECT_TIMEOUT": "2", "S3_SYNC_READ_TIMEOUT": "10",
        "S3_SYNC_STATE_DIR": str(tmp_path_factory.mktemp("state")),
    })
    prometheus = PrometheusServer([f"{HOST}:{sidecar.port}"], rule_files=[str(RULES)])

    def reconciles(result: str) -> float:
        return sidecar.metrics().get(f'replicator_reconciles_total{{result="{result}"}}', 0)

    def scrape() -> str:
        answer = sidecar.get("/metrics")
        assert answer is not None and answer[0] == 200
        return answer[1].decode()

    def succeeded(count: int) -> None:
        wait_for(lambda: reconciles("success") >= count, timeout=30, what=f"successful reconcile {count}")

    try:
        prometheus.start()  # first: it sees the counters from their start
        sidecar.start()
        wait_for(lambda: reconciles("refused_by_guard") == 1, timeout=30, what="the guard's refusal")
        refused = scrape()
        # Scraped before the first event's copy: then its lag is an increase() Prometheus sees.
        wait_for(lambda: prometheus.query("replicator_replication_lag_seconds_count == 0"), timeout=15,
                 what="Prometheus to scrape the sidecar")

        put_source("kept.txt")
        wait_for(lambda: "kept.txt" in dest_keys(), timeout=15, what="the event copy")
        # The listener reconnects and asks for a reconcile: the sidecar's only trigger
        # short of its hour-long interval.
        proxy.cut()
        succeeded(1)
        succeeded_at = time.time()
        assert dest_keys() == {"kept.txt"}, "the first success did not make the refused deletions"
        first_success = scrape()

        # Changes the events can't bring: an upload while the stream is cut, and
        # changes made behind the sidecar's back at the destination.
        proxy.hold()
        proxy.cut()
        wait_for(lambda: sidecar.metrics()["replicator_listener_connected"] == 0, what="the listener cut off")
        put_source("missed.txt")
        dest.delete_object(Bucket=dest_bucket, Key="kept.txt")
        dest.put_object(Bucket=dest_bucket, Key="drift.txt", Body=b"not in the source")
        proxy.release()  # the held reconnect goes through, and asks for a reconcile
        succeeded(2)
        assert dest_keys() == {"kept.txt", "missed.txt"}
        repaired = scrape()

        wait_for(lambda: [s["value"][1] for s in prometheus.query("replicator_reconcile_repaired_objects_total")]
                 == ["3"], timeout=15, what="Prometheus to scrape the repairs")
        panel_data = {panel["title"]: any(math.isfinite(float(series["value"][1]))
                                          for expr in queries(panel) for series in prometheus.query(expr))
                      for panel in dashboard_panels()}
        # Alerts pending while the sidecar was not ready, or its listener cut off, end
        # at the next evaluation; what fires then stays.
        wait_for(lambda: all(alert["state"] == "firing" for alert in prometheus.alerts()), timeout=15,
                 what="no alert pending")
        alerts = {(alert["labels"]["alertname"], alert["state"]) for alert in prometheus.alerts()}
        return Observed(refused, first_success, repaired, succeeded_at, panel_data, alerts)
    except BaseException:
        print(sidecar.log()[-6000:])
        raise
    finally:
        sidecar.close()
        proxy.close()
        prometheus.close()


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, as the exposition writes them."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_the_last_success_timestamp_is_absent_until_the_first_success(observed):
    before = samples(observed.refused)
    assert "replicator_reconcile_last_success_timestamp_seconds" not in observed.refused
    assert before['replicator_reconciles_total{result="refused_by_guard"}'] == 1
    assert before['replicator_reconciles_total{result="success"}'] == 0  # there, at 0
    assert before['replicator_reconciles_total{result="failed"}'] == 0
    assert before["replicator_delete_guard_refusals_total"] == 1
    assert before["replicator_ready"] == 0
    after = samples(observed.succeeded)
    assert 0 < observed.succeeded_at - after["replicator_reconcile_last_success_timestamp_seconds"] < 30
    assert after["replicator_ready"] == 1 and after["replicator_reconcile_in_progress"] == 0


def test_the_initial_copy_is_no_repair_and_what_the_events_missed_is(observed):
    initial = samples(observed.succeeded)
    # The first success deleted the three objects the guard had held back: still the initial copy.
    assert initial["replicator_objects_deleted_total"] == 3
    assert initial["replicator_reconcile_repaired_objects_total"] == 0
    later = samples(observed.repaired)
    # missed.txt (uploaded while the listener was cut off), kept.txt (deleted at the
    # destination), drift.txt (written to the destination): three repairs.
    assert later["replicator_reconcile_repaired_objects_total"] == 3
    assert later['replicator_reconciles_total{result="success"}'] == 2


def test_promtool_finds_nothing_to_fix_in_a_real_scrape(observed):
    scraped = samples(observed.repaired)
    # The histograms have samples, so their lines are checked too.
    assert scraped["replicator_replication_lag_seconds_count"] >= 1
    assert scraped["replicator_reconcile_duration_seconds_count"] == 3
    checked = promtool("check", "metrics", stdin=observed.repaired)
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr


PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what's left once strings, label
    matchers, range windows, label lists, functions, keywords and numbers are out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if match.group().lower() in PROMQL_WORDS or expr[match.end():].lstrip().startswith("("):
            continue
        names.add(match.group())
    return names


def exported_names(text: str) -> set[str]:
    """Every series name the scrape exports, and the names of the families it declares
    without a sample yet (replicator_failures_total before the first failure)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                    "summary": ("_sum", "_count")}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_every_metric_the_dashboard_and_the_rules_name_is_in_a_real_scrape(observed):
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    referenced = {name for expr in dashboard_queries() + [rule["expr"] for rule in rules]
                  for name in metric_names(expr)}
    # The parser finds what they use, from each of the two files.
    assert {"replicator_replication_lag_seconds_bucket", "replicator_build_info", "process_start_time_seconds",
            "replicator_ready"} <= referenced
    missing = referenced - exported_names(observed.repaired)
    assert not missing, f"named by deploy/ but not exported by the sidecar: {sorted(missing)}"


def test_every_dashboard_panel_shows_data_from_a_real_prometheus(observed):
    empty = {title for title, has_data in observed.panel_data.items() if not has_data}
    # Their series appear with the first failure or retry; until then the panels say
    # "no failures" and "no retries".
    assert empty <= {"Failures by reason", "Retries by reason"}, f"panels without data: {sorted(empty)}"


def test_over_the_real_sidecar_only_the_guard_refusal_alert_fires(observed):
    # The sidecar is ready and listening again at the end, and succeeded less than
    # 2 x S3_SYNC_INTERVAL ago; the refusal at its start was less than an hour ago.
    assert observed.alerts == {("ReplicatorDeleteGuardRefused", "firing")}
