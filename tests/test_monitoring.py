"""Prometheus rules and the Grafana dashboard (issue 5).

Static: `promtool check rules` / `promtool test rules` on the PrometheusRule's groups (each alert
fires and stays silent in k8s/monitoring/tests/), every metric used is one the service defines
(docs/architecture.md), the dashboard JSON round-trips through grafana-foundation-sdk and is what
the ConfigMap ships.

Live: a real Prometheus (Debian package) on loopback scrapes a real `python -m service` serving an
exported MiniLM bundle while traffic flows, evaluates the rules, and EVERY PromQL expression of the
dashboard and of the rules must return data.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import missing_tool, tool

ROOT = Path(__file__).resolve().parents[1]
MON = ROOT / "k8s" / "monitoring"
RULES_CR = MON / "prometheusrule.yaml"
RULES_TEST = MON / "tests" / "qaembed-rules_test.yml"
DASHBOARD = MON / "grafana" / "qaembed-dashboard.json"
ALERTS = {"QaembedHighLatencyP99", "QaembedHighErrorRatio", "QaembedDown", "QaembedNotReady",
          "QaembedQueueSaturated", "QaembedNoDocuments"}
# `<expression> <comparison> <number>`: the live test queries the left side.
ALERT_FORM = re.compile(r"^(?P<lhs>.+?)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<threshold>[0-9.]+(?:e-?[0-9]+)?)$", re.S)



def rule_groups() -> list[dict]:
    return yaml.safe_load(RULES_CR.read_text())["spec"]["groups"]


def write_rules(folder: Path, interval: str | None = None) -> Path:
    """The PrometheusRule's spec as a plain rules file (what the operator hands Prometheus)."""
    groups = rule_groups()
    if interval:
        groups = [{**g, "interval": interval} for g in groups]
    path = folder / "qaembed.rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def all_rules() -> list[dict]:
    return [r for g in rule_groups() for r in g["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """Metric and recording-rule names an expression selects (identifiers followed by { [ or space)."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values such as job="qaembed" are not names
    words = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=[{\[)]|$)", expr))
    words |= set(re.findall(r"\b(qaembed[a-zA-Z0-9_:]*)", expr))
    return {w for w in words if w.startswith("qaembed")}


def architecture_metrics() -> dict[str, str]:
    table = (ROOT / "docs" / "architecture.md").read_text()
    return dict(re.findall(r"^\| `(qaembed_[a-z_]+)` \| ([a-z]+)", table, re.M))


def service_metrics() -> dict[str, str]:
    """Name -> type of every metric the service registers (counters by their exported `_total` name)."""
    from service.metrics import ServiceMetrics

    families = ServiceMetrics(process=False).registry.collect()
    return {f.name + ("_total" if f.type == "counter" else ""): f.type for f in families}


# --------------------------------------------------------------------------- static checks
def test_promtool_check_rules(tmp_path: Path) -> None:
    out = subprocess.run([tool("promtool"), "check", "rules", str(write_rules(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in out.stdout


def test_promtool_unit_tests(tmp_path: Path) -> None:
    write_rules(tmp_path)
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    out = subprocess.run([tool("promtool"), "test", "rules", RULES_TEST.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """Guards the unit tests: with every alert threshold made unreachable, they must fail."""
    rules = write_rules(tmp_path)
    rules.write_text(re.sub(r"(expr: .*(?:>|==) )[0-9.]+", r"\g<1>1e9", rules.read_text()))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    out = subprocess.run([tool("promtool"), "test", "rules", RULES_TEST.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    for alert in ALERTS:
        assert f"alertname: {alert}," in out.stdout + out.stderr, alert


def test_every_alert_is_tested_firing_and_silent() -> None:
    alerts = {r["alert"]: r for r in all_rules() if "alert" in r}
    assert set(alerts) == ALERTS
    fires, silent = set(), set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for t in case.get("alert_rule_test", []):
            (fires if t["exp_alerts"] else silent).add(t["alertname"])
            # a firing case must also leave some other series silent: more series than alerts
            if t["exp_alerts"]:
                instances = {s["series"].split("{")[1].split("}")[0] for s in case["input_series"]}
                assert len(instances) > len(t["exp_alerts"]), t["alertname"]
    assert fires == ALERTS and silent == ALERTS
    for name, rule in alerts.items():
        assert ALERT_FORM.match(rule["expr"].strip()), f"{name}: expr must be '<expr> <op> <number>'"
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
        page, anchor = rule["annotations"]["runbook_url"].split("#")
        assert page.endswith("/docs/operations.md") and anchor == name.lower(), rule["annotations"]["runbook_url"]
        assert f"\n### {name}\n" in (ROOT / "docs" / "operations.md").read_text(), f"no runbook '### {name}'"


def test_every_metric_used_is_defined_by_the_service() -> None:
    defined = architecture_metrics()
    assert defined == service_metrics(), "the metrics table in docs/architecture.md vs service/metrics.py"
    series = set()
    for name, kind in defined.items():
        series |= {name} if kind in ("counter", "gauge") else {name + s for s in ("_bucket", "_sum", "_count")}
        if kind == "counter":  # prometheus_client appends _total; the table already names it
            series.add(name if name.endswith("_total") else name + "_total")
    recorded = {r["record"] for r in all_rules() if "record" in r}
    for where, expr in [(r.get("record") or r["alert"], r["expr"]) for r in all_rules()] + dashboard_exprs():
        unknown = metric_names(expr) - series - recorded
        assert not unknown, f"{where}: {expr} uses {unknown}, which the service does not export"


def test_dashboard_structure() -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "job"} <= variables
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["w"] > 0 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["refId"], p["title"]
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
    text = json.dumps(dash)
    wanted = {"request rate": "qaembed_requests_total", "errors by type": "error_type",
              "latency": "qaembed_request_duration_seconds_bucket", "queue size": "qaembed_queue_size",
              "batch size": "qaembed_batch_size", "tokens per batch": "qaembed_batch_tokens",
              "documents": "qaembed_documents", "model version": "qaembed_model_info", "pods": "qaembed_ready"}
    titles = " | ".join(p["title"].lower() for p in panels)
    for title, metric in wanted.items():
        assert title in titles, title
        assert metric in text, metric
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(qaembed_request_duration_seconds_bucket" in text


def test_dashboard_round_trips_through_grafana_sdk() -> None:
    """Every key of the JSON is one the Grafana schema knows (a misspelled key is dropped)."""
    try:
        from grafana_foundation_sdk.models.dashboard import Dashboard
    except ImportError:
        missing_tool("grafana-foundation-sdk")
    original = json.loads(DASHBOARD.read_text())
    back = json.loads(json.dumps(Dashboard.from_json(original).to_json(), default=lambda o: o.to_json()))
    lost = []

    def walk(a, b, path):
        if isinstance(a, dict):
            for k, v in a.items():
                if k not in b:
                    lost.append(f"{path}/{k}")
                else:
                    walk(v, b[k], f"{path}/{k}")
        elif isinstance(a, list):
            assert isinstance(b, list) and len(a) == len(b), path
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}[{i}]")
        else:
            assert a == b, (path, a, b)

    walk(original, back, "")
    assert not lost, f"keys the Grafana schema does not know: {lost}"


def test_dashboard_and_provisioning_are_shipped_in_configmaps() -> None:
    kustomization = yaml.safe_load((MON / "kustomization.yaml").read_text())
    gens = {g["name"]: g for g in kustomization["configMapGenerator"]}
    dash_cm = gens["qaembed-grafana-dashboard"]
    assert dash_cm["files"] == ["grafana/qaembed-dashboard.json"]
    assert dash_cm["options"]["labels"]["grafana_dashboard"] == "1"
    provisioning = yaml.safe_load((MON / "grafana" / "dashboards.yaml").read_text())
    assert provisioning["providers"][0]["options"]["path"].startswith("/var/lib/grafana/dashboards")
    kubectl = tool("kubectl")
    for overlay in ("cpu", "gpu"):
        out = subprocess.run([kubectl, "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout) if d}
        shipped = docs[("ConfigMap", "qaembed-grafana-dashboard")]["data"]["qaembed-dashboard.json"]
        assert json.loads(shipped) == json.loads(DASHBOARD.read_text())
        assert set(docs[("ConfigMap", "qaembed-grafana-provisioning")]["data"]) == {"dashboards.yaml",
                                                                                   "datasources.yaml"}
        assert docs[("PrometheusRule", "qaembed")]["spec"]["groups"] == rule_groups()


# --------------------------------------------------------------------------- live Prometheus
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited {proc.returncode}\n" + (log.read_text()[-3000:] if log else ""))
        try:
            if check():
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{what}: not after {timeout} s\n" + (log.read_text()[-3000:] if log else ""))


def substitute(expr: str) -> str:
    """Grafana variables -> what they resolve to with job=All."""
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "5s").replace('"$job"', '".*"')


@pytest.fixture
def running_service(request, tmp_path: Path, example_data: Path):
    if os.environ.get("QAEMBED_TEST_BUNDLE"):  # "REGISTRY:NAME": serve an existing bundle instead
        registry, name = os.environ["QAEMBED_TEST_BUNDLE"].rsplit(":", 1)
    else:
        registry, name = request.getfixturevalue("exported_bundle")
    port = free_port()
    log = tmp_path / "service.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "QAEMBED_INTRA_OP_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--registry", str(registry), "--name", name,
             "--data_dir", str(tmp_path / "data"), "--corpus", str(example_data),
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http("GET", base + "/ready", timeout=2)[0] == 200, 120, "service /ready", proc, log)
        yield base, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def prometheus(running_service, tmp_path: Path):
    binary = tool("prometheus")
    _, service_port = running_service
    rules = write_rules(tmp_path, interval="1s")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "qaembed", "static_configs": [{"targets": [f"127.0.0.1:{service_port}"]}]}],
    }))
    check = subprocess.run([tool("promtool"), "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = tmp_path / "prometheus.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http("GET", base + "/-/ready", timeout=2)[0] == 200, 30, "prometheus /-/ready", proc, log)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def traffic(base: str, stop: threading.Event) -> None:
    questions = ["Kredi kartı aidatı nasıl iade edilir?", "Şifremi unuttum, ne yapmalıyım?", "İade süresi nedir?"]
    while not stop.is_set():
        assert http("POST", base + "/embed", {"inputs": questions})[0] == 200
        assert http("POST", base + "/v1/embeddings", {"input": questions[0]})[0] == 200
        assert http("POST", base + "/search", {"query": questions[1], "top_k": 3})[0] == 200
        assert http("POST", base + "/embed", {"no_inputs": 1})[0] == 422  # an error, by type
        assert http("GET", base + "/info")[0] == 200
        stop.wait(0.3)


def query(prom: str, expr: str) -> list[dict]:
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body = http("GET", url)
    result = json.loads(body)
    assert status == 200 and result["status"] == "success", (expr, result)
    return result["data"]["result"]


def has_data(result: list[dict]) -> bool:
    return any(not math.isnan(float(r["value"][1])) for r in result)


def test_every_dashboard_and_rule_expression_returns_data(running_service, prometheus) -> None:
    service, _ = running_service
    stop = threading.Event()
    errors: list[BaseException] = []

    def run_traffic():
        try:
            traffic(service, stop)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    sender = threading.Thread(target=run_traffic, daemon=True)
    sender.start()
    exprs: dict[str, str] = {}
    for title, expr in dashboard_exprs():
        exprs[f"dashboard '{title}': {expr}"] = substitute(expr)
    for rule in all_rules():
        if "record" in rule:
            exprs[f"recording rule {rule['record']}"] = rule["expr"]
            exprs[f"recorded series {rule['record']}"] = rule["record"]
        else:
            exprs[f"alert {rule['alert']} (left side)"] = ALERT_FORM.match(rule["expr"].strip())["lhs"]
    missing = dict(exprs)
    try:
        deadline = time.monotonic() + 45
        while missing and time.monotonic() < deadline and not errors:
            for where, expr in list(missing.items()):
                if has_data(query(prometheus, expr)):
                    del missing[where]
            time.sleep(1)
    finally:
        stop.set()
        sender.join(timeout=30)
    assert not errors, f"traffic failed: {errors[0]!r}"
    assert not missing, "expressions without data:\n" + "\n".join(f"  {w}: {e}" for w, e in missing.items())

    # rules evaluate cleanly and the scrape target is up
    status, body = http("GET", prometheus + "/api/v1/rules")
    groups = json.loads(body)["data"]["groups"]
    bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
    assert not bad, bad
    assert len([r for g in groups for r in g["rules"]]) == len(all_rules())
    assert [r["value"][1] for r in query(prometheus, 'up{job="qaembed"}')] == ["1"]
    # the service is healthy: nothing fires but (at most) pending alerts of the traffic-less kind
    firing = [a for a in query(prometheus, 'ALERTS{alertstate="firing"}')]
    assert not firing, firing
