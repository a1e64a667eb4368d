"""deploy/prometheus: the rules pass `promtool check rules` and their unit tests (`promtool test rules`), name only
metrics the gateway exports, and a real Prometheus (Debian's) scraping a two-worker gunicorn sees counters
that add up to exactly the traffic sent, with every rule evaluating without error.

Requires prometheus and promtool (``.ci/run`` installs Debian's prometheus and sets
GATEWAY_REQUIRE_PROMETHEUS=1).
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml

from app.web.metrics import GatewayMetrics
from tests.support import harness, programs
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "deploy" / "prometheus"
RULES = RULES_DIR / "gateway.rules.yml"
JOB = "portrait-gateway"


@pytest.fixture(scope="module")
def promtool() -> str:
    return programs.require("promtool", "PROMETHEUS", package="prometheus")


@pytest.fixture(scope="module")
def prometheus() -> str:
    return programs.require("prometheus", "PROMETHEUS", package="prometheus")


def run(command: list[str], cwd: Path = RULES_DIR) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_checks_the_rules(promtool: str) -> None:
    result = run([promtool, "check", "rules", RULES.name])
    assert result.returncode == 0, result.stdout + result.stderr
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    count = sum(len(group["rules"]) for group in groups)
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_the_rules_pass_their_unit_tests(promtool: str) -> None:
    tests = sorted(p.relative_to(RULES_DIR).as_posix() for p in (RULES_DIR / "tests").glob("*.yml"))
    assert tests
    result = run([promtool, "test", "rules", *tests])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "FAILED" not in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tested = {
        case["alertname"]
        for path in (RULES_DIR / "tests").glob("*.yml")
        for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")  # one that fires, not only one that stays quiet
    }
    assert alerts == tested, alerts ^ tested


def test_the_rules_name_only_metrics_the_gateway_exports() -> None:
    """A renamed metric in app/metrics.py would leave a rule that silently never fires."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    exported = {
        family.name + suffix
        for family in GatewayMetrics().registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }
    rules = [rule for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"] for rule in group["rules"]]
    recorded = {rule["record"] for rule in rules if "record" in rule}
    exprs = " ".join(rule["expr"] for rule in rules)
    recording_names = r"\b[a-z_]+:[a-z_0-9]+:[a-z_0-9]+\b"
    assert set(re.findall(recording_names, exprs)) <= recorded  # used only where recorded
    metrics = set(re.findall(r"\bgateway_[a-z_]+\b", re.sub(recording_names, " ", exprs)))
    assert len(metrics) >= 5, metrics
    assert metrics <= exported, metrics - exported


def test_the_example_scrape_config_is_valid(promtool: str, tmp_path: Path) -> None:
    """prometheus.yml, with its Kubernetes discovery swapped for a static target: Debian builds Prometheus without
    Kubernetes service discovery, so that part is the one this check cannot read."""
    config = yaml.safe_load((RULES_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    assert {job["job_name"] for job in config["scrape_configs"]} == {JOB, "tf-serving"}
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
        job["static_configs"] = [{"targets": ["127.0.0.1:1"]}]
    config["rule_files"] = [str(RULES_DIR / name) for name in config["rule_files"]]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run([promtool, "check", "config", str(path)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- a real Prometheus scraping a real gunicorn -------------------------------------------------------------


def query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


def send(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body or None, method=method)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def test_prometheus_scrapes_two_workers_and_the_sums_match_the_traffic(prometheus: str, tmp_path: Path) -> None:
    multiproc = tmp_path / "multiproc"
    multiproc.mkdir()
    env = {"GATEWAY_RATE_LIMIT": "", "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    with programs.thin_gateway(tmp_path, workers=2, env=env) as g:
        # The traffic: photo requests refused 415 (not photos) on three routes, and unknown paths (404).
        plan = [("POST", "/api/v1/detect")] * 24 + [("POST", "/api/v1/search")] * 12 + [("GET", "/no/such/page")] * 9

        def one(_client: int, n: int) -> harness.Request:
            method, path = plan[n]
            headers = {"Content-Type": "text/plain"} if method == "POST" else {}
            return harness.Request(method, path, b"not a photo" if method == "POST" else b"", headers)

        result = harness.drive(g.port, one, concurrency=6, count=len(plan), keep_replies=True)
        sent = Counter(reply.status for reply in result.replies)
        assert sent == {415: 36, 404: 9}, result.errors
        pids = {a.pid for a in programs.access_log(g) if a.path != "/healthz"}
        assert len(pids) == 2, "the traffic reached one worker only"

        port = programs.free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{g.port}"]}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        argv = [
            prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        ]  # fmt: skip

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False

        with programs.running("prometheus", argv, tmp_path, port, ready=ready, timeout=30):
            expected = {
                ("/api/v1/detect", "POST", "415"): 24,
                ("/api/v1/search", "POST", "415"): 12,
                ("<unmatched>", "GET", "404"): 9,
            }
            selector = f'job="{JOB}",route!~"/metrics|/healthz"'
            promql = f"sum by (route, method, status) (gateway_http_requests_total{{{selector}}})"

            def counts() -> dict[tuple[str, str, str], float]:
                return {
                    (r["metric"]["route"], r["metric"]["method"], r["metric"]["status"]): float(r["value"][1])
                    for r in query(port, promql)
                }

            wait_for(counts, 30, "the requests counted in Prometheus", until=lambda seen: seen == expected, every=0.5)

            # Every rule group loaded and evaluated without error against the real series.
            def rule_groups() -> list[dict]:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as response:
                    return json.load(response)["data"]["groups"]

            def evaluated(groups: list[dict]) -> bool:
                rules = [rule for group in groups for rule in group["rules"]]
                return all(rule.get("lastEvaluation", "").startswith("20") for rule in rules)

            groups = wait_for(rule_groups, 15, "every rule evaluated", until=evaluated, every=0.5)
            rules = [rule for group in groups for rule in group["rules"]]
            assert {group["name"] for group in groups} == {"portrait-gateway.recording", "portrait-gateway.alerts"}
            assert [rule["name"] for rule in rules if rule["health"] != "ok"] == []
            assert query(port, f'up{{job="{JOB}"}}')[0]["value"][1] == "1"
