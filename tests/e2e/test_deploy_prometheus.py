"""deploy/prometheus and deploy/grafana checked for real.

- promtool (Debian's `prometheus` package) checks deploy/prometheus/alerts.yml and runs its
  unit tests, deploy/prometheus/alerts_test.yml, which hold a firing and a quiet case for
  every alert.
- Every metric name in the rules, in the Grafana dashboard and in the KEDA Prometheus
  queries is one that a real `tubeworker run` (real beanstalkd, control plane on, an
  `[api.NAME]` configured so the flow-control families have series) exports on /metrics.
- A real Prometheus scrapes that daemon and evaluates every rule and every dashboard and
  KEDA query against its data: no rule may fail (many-to-many matches, for one, only show
  at evaluation), and each KEDA query gives KEDA the single number it needs.

Metric names are read out of PromQL by `promql_names` (strings, label matchers, ranges and
label lists removed; what is left and not called like a function is a metric name), after
promtool has parsed the expression.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import greenstalk
import httpx
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until_sync
from tubeworker.control.metrics import TubeDepths, build_registry
from tubeworker.runtime.state import WorkerState

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "tubeworker.json"
KEDA_PROMETHEUS = REPO / "deploy" / "kubernetes" / "keda" / "scaledobject-prometheus.yaml"
DEPLOY_README = REPO / "deploy" / "README.md"

# Prometheus writes `up` for every target it scrapes; no exporter does.
SYNTHETIC = frozenset({"up"})
# What Grafana puts in for its variables before a query is sent.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$tube": ".*"}


def _missing(reason: str) -> NoReturn:
    """Skip, or fail under CI, where the deploy files must be checked (as for beanstalkd)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must have it: deploy tests cannot be skipped there)")
    pytest.skip(reason)


def find_tool(name: str) -> str:
    """promtool or prometheus, from Debian's `prometheus` package."""
    path = shutil.which(name) or (
        f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None
    )
    if path is None:
        _missing(
            f"{name} is not installed: `make test` installs Debian's prometheus package "
            "(`apt-get install -y prometheus`), or install it yourself"
        )
    return path


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_tool("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


# --- metric names ---------------------------------------------------------------------------

_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NUMBERS = re.compile(r"(?<![\w:.])(?:0x[0-9a-fA-F]+|\d[\w.]*)")
_VARIABLES = re.compile(r"\$\{?\w+\}?")
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "atan2"}
)


def promql_names(expr: str) -> set[str]:
    """The metric names an expression selects (parse it with promtool first)."""
    text = _VARIABLES.sub(" ", _STRINGS.sub(" ", expr))
    previous = None
    while previous != text:  # label lists and matchers do not nest, but may follow each other
        previous = text
        text = _LABEL_LISTS.sub(" ", _RANGES.sub(" ", _MATCHERS.sub(" ", text)))
    text = _NUMBERS.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        called = text[match.end() :].lstrip().startswith("(")
        if not called and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def exported_names(exposition: str, *, with_samples: bool) -> set[str]:
    """Sample names in a /metrics text: with_samples=False adds the names of families that
    have none yet (a counter's _total, a histogram's _bucket, _sum and _count)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        if not with_samples:
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
            names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def module_names() -> set[str]:
    """Every name tubeworker.control.metrics can export (its families, even empty ones)."""
    registry = build_registry(WorkerState(), TubeDepths())
    return exported_names(generate_latest(registry).decode(), with_samples=False)


# --- the files' queries ---------------------------------------------------------------------


def load_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in load_rules() if "record" in rule}


def rule_exprs() -> dict[str, str]:
    return {rule.get("alert") or rule["record"]: str(rule["expr"]) for rule in load_rules()}


def dashboard_exprs() -> dict[str, str]:
    """Every PromQL query of the dashboard (panels and variables), variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    found: dict[str, str] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found[f"{panel['title']} [{target['refId']}]"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(METRIC, LABEL): the metric's series, as Grafana asks for them.
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["definition"])
            assert match, variable["definition"]
            found[f"variable {variable['name']}"] = match.group(1)
    for key, expr in found.items():
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{key}: a Grafana variable this test does not know: {expr}"
        found[key] = expr
    return found


def keda_exprs() -> dict[str, str]:
    found = {}
    for doc in yaml.safe_load_all(KEDA_PROMETHEUS.read_text()):
        for trigger in doc["spec"]["triggers"]:
            if trigger["type"] == "prometheus":
                found[f"KEDA {doc['metadata']['name']}"] = trigger["metadata"]["query"]
    return found


def rules_file(path: Path, exprs: dict[str, str]) -> Path:
    """Queries as recording rules, so that promtool parses them and Prometheus runs them."""
    rules = [{"record": f"check:query_{i}", "expr": expr} for i, expr in enumerate(exprs.values())]
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    return path


# --- promtool, no daemon --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (tube) (rate(tubeworker_jobs_total{tube=~"a|b"}[5m]))', {"tubeworker_jobs_total"}),
        ("a_metric offset 5m > bool 1e3", {"a_metric"}),
        ('up{job="x"} == 0 unless on (instance) group_left () b:rec:sum', {"up", "b:rec:sum"}),
        ("histogram_quantile(0.9, sum(rate(h_bucket[$__rate_interval])) by (le))", {"h_bucket"}),
        ('label_replace(vector(1), "dst", "$1", "src", "(.*)") > bool NaN', set()),
        ("max_over_time(g[10m:1m]) > +Inf or absent(c)", {"g", "c"}),
    ],
)
def test_promql_names_finds_the_metric_names_of_an_expression(expr: str, names: set[str]) -> None:
    assert promql_names(expr) == names


def test_promtool_check_rules_accepts_the_alert_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = promtool("test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case_and_a_section_in_the_readme() -> None:
    alerts = {rule["alert"] for rule in load_rules() if "alert" in rule}
    cases: dict[str, set[bool]] = {alert: set() for alert in alerts}
    for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases[case["alertname"]].add(bool(case["exp_alerts"]))
    assert {alert: kinds for alert, kinds in cases.items() if kinds != {True, False}} == {}
    readme = DEPLOY_README.read_text()
    assert [alert for alert in sorted(alerts) if f"#### {alert}" not in readme] == []


def test_every_dashboard_and_keda_query_parses(tmp_path: Path) -> None:
    exprs = {**dashboard_exprs(), **keda_exprs()}
    result = promtool("check", "rules", str(rules_file(tmp_path / "queries.yml", exprs)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "tube"} <= variables
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
    titles = " | ".join(panel["title"] for panel in panels)
    for wanted in ("Throughput", "Failure rate", "Queue latency", "in flight", "Backlog"):
        assert wanted in titles
    for wanted in ("Tube depth", "Breaker state", "Paused tubes", "loop stalls"):
        assert wanted in titles


def test_every_metric_name_is_one_the_metrics_module_exports() -> None:
    """Fast, no daemon: the names the collector declares. The real scrape is below."""
    known = module_names() | SYNTHETIC | recorded_names()
    queries = {**rule_exprs(), **dashboard_exprs(), **keda_exprs()}
    unknown = {key: promql_names(expr) - known for key, expr in queries.items()}
    assert {key: names for key, names in unknown.items() if names} == {}


# --- a real daemon, and a real Prometheus scraping it ---------------------------------------


def daemon_config(path: Path, server: BeanstalkdProcess) -> Path:
    path.write_text(
        "\n".join(
            [
                "[worker]",
                f'servers = ["{server.address}"]',
                "drain_timeout = 5",
                "[logging]",
                'format = "json"',
                "[handlers]",
                '"sleepy" = "tests.e2e.handlers:sleepy"',
                # The flow-control families (tubeworker_api_*) have series only for the
                # APIs a config declares.
                "[api.partner]",
                'hosts = ["partner.invalid"]',
                'tubes = ["partner"]',
                "pause_tubes = true",
                "rate = 1000",  # and the fleet limits' (tubeworker_limit_tokens*, _degraded)
                "fleet = true",
                # The schedules' families have series for each configured schedule.
                "[[schedule]]",
                'name = "scrape"',
                'every = "1s"',  # (its last fire has a series after one fire)
                'tube = "e2e-schedule"',
                'task = "sleepy"',
                # And the heartbeats' for each configured heartbeat.
                "[[heartbeat]]",
                'tube = "e2e"',
                'every = "1s"',
                "[[pool]]",
                'tubes = ["e2e", "partner"]',
                "concurrency = 4",
                "[control]",
                "metrics_interval = 0.2",
                "server_max_connections = 1024",  # (tubeworker_server_max_connections)
            ]
        )
        + "\n"
    )
    return path


def scrape(base: str) -> str:
    return httpx.get(f"{base}/metrics", timeout=5).text


@pytest.fixture
def working_daemon(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> str:
    """A `tubeworker run` with its control plane on, that has done some jobs: the control
    plane's base URL, once its scrape has series of every family (`daemons` stops it)."""
    port = free_port()
    daemon = DaemonProcess(daemon_config(tmp_path / "w.toml", beanstalkd), tmp_path)
    daemons.append(daemon.start("--control", f"127.0.0.1:{port}"))
    daemon.wait_ready()
    base = f"http://127.0.0.1:{port}"
    with greenstalk.Client((beanstalkd.host, beanstalkd.port), use="e2e") as client:
        for n in range(5):
            client.put(json.dumps({"task": "sleepy", "payload": {"n": n}}), ttr=30)
    wait_until_sync(lambda: len(daemon.runs("end")) == 5, timeout=20, what="5 jobs done")
    wanted = module_names()
    wait_until_sync(
        lambda: wanted <= exported_names(scrape(base), with_samples=True),
        timeout=20,
        what="a series of every family in /metrics (tube depths are polled)",
    )
    return base


@pytest.mark.slow
def test_every_metric_name_is_in_a_real_scrape(working_daemon: str) -> None:
    exposition = scrape(working_daemon)
    scraped = exported_names(exposition, with_samples=True)
    known = scraped | SYNTHETIC | recorded_names()
    queries = {**rule_exprs(), **dashboard_exprs(), **keda_exprs()}
    unknown = {key: promql_names(expr) - known for key, expr in queries.items()}
    assert {key: names for key, names in unknown.items() if names} == {}
    # Each query selects something (but the SLA constants): none found means a bad parse.
    constants = [key for key, expr in queries.items() if not promql_names(expr)]
    assert constants == ["tubeworker:backlog_sla_seconds"]
    # The exposition itself passes Prometheus's own lint.
    lint = subprocess.run(
        [find_tool("promtool"), "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


class PrometheusProcess:
    """Debian's prometheus on a free loopback port, its data in a test's folder; stopped
    by PID."""

    def __init__(self, workdir: Path, target: str, rule_files: list[Path]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {"job_name": "tubeworker", "static_configs": [{"targets": [target]}]}
            ],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.data = workdir / "prometheus-data"
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusProcess:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    find_tool("prometheus"),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.data}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until_sync(ready, timeout=30, what="prometheus ready")
        return self

    def query(self, expr: str) -> list[dict[str, Any]]:
        reply = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert reply["status"] == "success", reply
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    def rules(self) -> list[dict[str, Any]]:
        """Every rule's state: health (ok, err, unknown), lastError, lastEvaluation."""
        reply = httpx.get(f"{self.url}/api/v1/rules", timeout=10).json()
        return [rule for group in reply["data"]["groups"] for rule in group["rules"]]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def evaluated_at(rule: dict[str, Any]) -> datetime:
    """A rule's lastEvaluation (RFC 3339 with nanoseconds: Python reads microseconds)."""
    stamp = re.sub(r"(\.\d{6})\d+", r"\1", rule["lastEvaluation"]).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp)


@pytest.fixture
def prometheus_servers() -> Iterator[list[PrometheusProcess]]:
    started: list[PrometheusProcess] = []
    yield started
    for server in started:
        server.stop()


@pytest.mark.slow
def test_a_real_prometheus_evaluates_every_rule_and_query_on_real_data(
    working_daemon: str, tmp_path: Path, prometheus_servers: list[PrometheusProcess]
) -> None:
    queries = rules_file(tmp_path / "queries.yml", {**dashboard_exprs(), **keda_exprs()})
    target = working_daemon.removeprefix("http://")
    prometheus = PrometheusProcess(tmp_path, target, [ALERTS, queries])
    prometheus_servers.append(prometheus.start())

    # Two scrapes at least (rate() needs two samples), then a round of rules after them.
    def scraped_twice() -> bool:
        return bool(prometheus.query('count_over_time(up{job="tubeworker"}[1m]) >= 2'))

    wait_until_sync(scraped_twice, timeout=30, what="two scrapes of the daemon")
    assert prometheus.query('up{job="tubeworker"}')[0]["value"][1] == "1"
    since = datetime.now(UTC)

    def evaluated_since() -> bool:
        rules = prometheus.rules()
        return bool(rules) and all(evaluated_at(rule) > since for rule in rules)

    wait_until_sync(evaluated_since, timeout=30, what="every rule evaluated on that data")
    rules = prometheus.rules()
    assert len(rules) == len(load_rules()) + len(dashboard_exprs()) + len(keda_exprs())
    failed = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert failed == {}
    # A healthy worker (connected, jobs done, breaker closed): no alert even pending.
    alerting = {rule["name"]: rule["state"] for rule in rules if rule["type"] == "alerting"}
    assert set(alerting.values()) == {"inactive"}, alerting
    # KEDA takes one number or none (none reads as 0), never several.
    for key, expr in keda_exprs().items():
        assert len(prometheus.query(expr)) <= 1, key
    # The tube variable of the dashboard finds the daemon's tubes.
    tubes = {series["metric"]["tube"] for series in prometheus.query("tubeworker_tube_jobs")}
    assert {"e2e", "partner"} <= tubes
