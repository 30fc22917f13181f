"""The ELK and Prometheus files of the deployment (they cannot run here): the Logstash
pipeline, the Elasticsearch index template and ILM policy, the Kibana saved objects and
the Prometheus scrape configuration and alert rules (promtool checks and unit-tests them)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from services.common.config import REPO_ROOT

OBS = REPO_ROOT / "observability"


def _strip_strings_and_comments(text: str) -> str:
    out, quote, index = [], None, 0
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 2
                continue
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#":
            while index < len(text) and text[index] != "\n":
                index += 1
            continue
        else:
            out.append(char)
        index += 1
    assert quote is None, "unterminated string in logstash.conf"
    return "".join(out)


def test_logstash_pipeline_structure():
    text = (OBS / "logstash" / "pipeline" / "logstash.conf").read_text()
    code = _strip_strings_and_comments(text)
    depth = 0
    for char in code:
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0, "unbalanced braces in logstash.conf"
    assert depth == 0, "unbalanced braces in logstash.conf"
    for section in ("input", "filter", "output"):
        assert re.search(rf"^{section}\s*\{{", text, re.M), section
    assert re.search(r"tcp\s*\{[^}]*port\s*=>\s*5000", text, re.S)
    assert re.search(r"codec\s*=>\s*json_lines", text)
    fingerprints = re.findall(r"fingerprint\s*\{(.*?)\n\s*\}", text, re.S)
    assert len(fingerprints) >= 2
    for block in fingerprints:
        assert re.search(r'method\s*=>\s*"SHA256"', block) and re.search(r'key\s*=>\s*"\$\{PSEUDONYM_KEY\}"', block)
        assert re.search(r'target\s*=>\s*"\[user\]\[hash\]"', block)
    assert re.search(r'remove_field\s*=>\s*\["user_id"\]', text)
    assert re.search(r'remove_field\s*=>\s*\["\[user\]\[id\]"\]', text)
    assert re.search(r'data_stream\s*=>\s*"true"', text)
    assert re.search(r'data_stream_type\s*=>\s*"logs"', text)
    assert re.search(r'data_stream_dataset\s*=>\s*"car_detection"', text)
    settings = yaml.safe_load((OBS / "logstash" / "config" / "logstash.yml").read_text())
    assert settings["pipeline.ecs_compatibility"] == "v8" and settings["api.http.port"] == 9600


def test_index_template_and_ilm_policy():
    template = json.loads((OBS / "elasticsearch" / "index-template.json").read_text())
    policy = json.loads((OBS / "elasticsearch" / "ilm-policy.json").read_text())
    assert "data_stream" in template and any(
        re.fullmatch(p.replace("*", ".*"), "logs-car_detection-default") for p in template["index_patterns"])
    assert template["priority"] > 100  # above Elasticsearch's built-in logs-*-* template
    settings = template["template"]["settings"]
    setup = (OBS / "kibana" / "setup.sh").read_text()
    assert f"_ilm/policy/{settings['index.lifecycle.name']}" in setup
    assert "_index_template/" in setup and "_import?overwrite=true" in setup

    properties = template["template"]["mappings"]["properties"]

    def mapping(dotted: str) -> dict:
        node = {"properties": properties}
        for part in dotted.split("."):
            node = node["properties"][part]
        return node

    expected = {"@timestamp": "date", "service.name": "keyword", "log.level": "keyword", "ecs.version": "keyword",
                "event.action": "keyword", "event.duration": "long", "event.outcome": "keyword",
                "http.request.method": "keyword", "http.response.status_code": "long", "trace.id": "keyword",
                "user.hash": "keyword", "model.version": "keyword", "detection.count": "integer",
                "detection.classes": "keyword", "detection.confidences": "float", "image.brightness": "float",
                "image.width": "integer", "image.height": "integer", "image.sharpness": "float"}
    for name, kind in expected.items():
        assert mapping(name)["type"] == kind, name
    assert "id" not in mapping("user")["properties"], "user.id must never be mapped: it is never stored"

    phases = policy["policy"]["phases"]
    assert "rollover" in phases["hot"]["actions"]
    assert "delete" in phases["delete"]["actions"] and re.fullmatch(r"\d+d", phases["delete"]["min_age"])


def test_kibana_saved_objects():
    lines = (OBS / "kibana" / "dashboard.ndjson").read_text().splitlines()
    objects = [json.loads(line) for line in lines]  # every line must be one JSON object
    assert all(isinstance(o, dict) and {"id", "type", "attributes", "references"} <= o.keys() for o in objects)
    by_id = {(o["type"], o["id"]) for o in objects}
    assert len(by_id) == len(objects), "duplicate saved object ids"
    data_views = [o for o in objects if o["type"] == "index-pattern"]
    assert data_views and data_views[0]["attributes"]["title"] == "logs-car_detection-*"
    assert data_views[0]["attributes"]["timeFieldName"] == "@timestamp"
    for obj in objects:
        for reference in obj["references"]:
            assert (reference["type"], reference["id"]) in by_id, (obj["id"], reference)
    template = json.loads((OBS / "elasticsearch" / "index-template.json").read_text())

    def mapped(dotted: str) -> bool:
        node = {"properties": template["template"]["mappings"]["properties"]}
        for part in dotted.split("."):
            node = node.get("properties", {}).get(part)
            if node is None:
                return False
        return True

    titles = []
    for vis in (o for o in objects if o["type"] == "visualization"):
        state = json.loads(vis["attributes"]["visState"])
        json.loads(vis["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        titles.append(state["title"].lower())
        for agg in state.get("aggs", []):
            if "field" in agg.get("params", {}):
                assert mapped(agg["params"]["field"]), (vis["id"], agg["params"]["field"])
        for series in state.get("params", {}).get("series", []):
            if series.get("terms_field"):
                assert mapped(series["terms_field"])
    for topic in ("requests per minute", "error rate", "latency percentiles", "detections per class",
                  "confidence", "model versions", "drift"):
        assert any(topic in title for title in titles), topic
    dashboards = [o for o in objects if o["type"] == "dashboard"]
    assert len(dashboards) == 1
    panels = json.loads(dashboards[0]["attributes"]["panelsJSON"])
    names = {r["name"] for r in dashboards[0]["references"]}
    assert len(panels) >= 8
    for panel in panels:
        assert f"{panel['panelIndex']}:{panel['panelRefName']}" in names


def test_prometheus_config_and_alerts():
    config = yaml.safe_load((OBS / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for job in ("gateway", "feature-service", "results-service", "model-serving", "triton"):
        assert job in jobs, job
    for job in ("gateway", "feature-service", "results-service", "model-serving"):
        assert jobs[job]["authorization"]["type"] == "Bearer", job
    assert jobs["triton"]["static_configs"][0]["targets"] == ["triton:8002"]
    rules = yaml.safe_load((OBS / "prometheus" / "alerts.yml").read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert "up" in alerts["ServiceDown"]["expr"]
    assert "http_requests_total" in alerts["HighErrorRate"]["expr"]
    assert "histogram_quantile(0.95" in alerts["DetectLatencyP95High"]["expr"]
    assert "nv_inference_queue_duration_us" in alerts["TritonQueueTimeHigh"]["expr"]
    assert any("Drift" in name for name in alerts)
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not installed (scripts/install_tools.sh installs Debian's prometheus)")
    for command in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]):
        checked = subprocess.run([promtool, *command], cwd=OBS / "prometheus", capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout, checked.stdout
