"""Every REST service publishes an OpenAPI 3 document, and a bounded schemathesis run
against it (on the real stack) finds no server error and no departure from the
document: status codes, content types, headers and bodies as documented, invalid
input refused with a 4xx, authentication not ignored.

Valid cases get a real image (tests/system/schemathesis_hooks.py), so detect,
features and explain reach their 2xx answers and those bodies are validated against
the response schemas; the gateway is fuzzed with an admin key and with a client key;
the stateful phase follows links added here to the gateway's document (detect ->
read -> feedback -> export -> erase). Each run must send a minimum number of requests,
reach the 2xx answers named below, and reach each step of that lifecycle with its success
answer (a 200 read and a 201 feedback of an id a detect returned, a 200 export of the
hooks' subject, and for the admin its 200 erasure). Not checked: `positive_data_acceptance` (the schema cannot say which
strings are acceptable user ids or request ids)."""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import INTERNAL_TOKEN, KEYS, REPO_ROOT
from tests.system.schemathesis_hooks import FUZZ_SUBJECT

CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
    "unsupported_method", "missing_required_header", "ignored_auth",
])
MAX_EXAMPLES = "25"  # per operation and phase: a few hundred requests per service
PHASES = "examples,coverage,fuzzing,stateful"
SERVICES = {  # name -> (port, source document, key)
    "gateway-admin": ("GATEWAY_PORT", REPO_ROOT / "gateway" / "openapi.yaml", "admin"),
    "gateway-client": ("GATEWAY_PORT", REPO_ROOT / "gateway" / "openapi.yaml", "client"),
    "feature-service": ("FEATURE_PORT", REPO_ROOT / "services" / "feature_service" / "openapi.yaml", None),
    "results-service": ("RESULTS_PORT", REPO_ROOT / "services" / "results_service" / "openapi.yaml", None),
}
# At least this many requests per run, and these (method, path, status) answers at least once.
MIN_REQUESTS = {"gateway-admin": 300, "gateway-client": 300, "feature-service": 60, "results-service": 300}
MUST_REACH = {
    "gateway-admin": [("POST", "/api/detect", 201), ("POST", "/api/features/preprocess", 200), ("POST", "/api/explain", 200),
                      ("GET", "/api/results/predictions/user/", 200), ("DELETE", "/api/results/predictions/user/", 200)],
    "gateway-client": [("POST", "/api/detect", 201), ("POST", "/api/features/preprocess", 200),
                       ("GET", "/api/results/predictions/user/", 200)],  # explain is for dpo/admin
    "feature-service": [("POST", "/preprocess", 200)],
    "results-service": [("POST", "/predictions", 201)],
}
PREDICTION = "#/paths/~1api~1results~1predictions~1{request_id}"
SUBJECT = "#/paths/~1api~1results~1predictions~1user~1{user_id}"
DETECT_LINKS = {  # the lifecycle of a detection, for the stateful phase
    "Read": {"operationRef": f"{PREDICTION}/get", "parameters": {"path.request_id": "$response.body#/request_id"}},
    "Contest": {"operationRef": f"{PREDICTION}~1feedback/post", "parameters": {"path.request_id": "$response.body#/request_id"}},
    "Export": {"operationRef": f"{SUBJECT}/get", "parameters": {"path.user_id": FUZZ_SUBJECT}},
    "Erase": {"operationRef": f"{SUBJECT}/delete", "parameters": {"path.user_id": FUZZ_SUBJECT}},
}


@pytest.mark.parametrize("service", ["gateway-admin", "feature-service", "results-service"])
def test_openapi_document_is_served(stack, http, service):
    port, source, _ = SERVICES[service]
    answer = http.get(stack.url(port, "/openapi.json"), timeout=5)  # no API key: it is documentation
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/json")
    document = answer.json()
    assert document == yaml.safe_load(source.read_text())
    assert document["openapi"].startswith("3.") and document["paths"]


def _document_with_links(base: str, folder: Path) -> Path:
    document = requests.get(f"{base}/openapi.json", timeout=10).json()
    if "/api/detect" in document["paths"]:
        created = document["paths"]["/api/detect"]["post"]["responses"]["201"]
        created["links"] = DETECT_LINKS
        read = document["paths"]["/api/results/predictions/{request_id}"]["get"]["responses"]["200"]
        read["links"] = {name: DETECT_LINKS[name] for name in ("Contest", "Export")}
        exported = document["paths"]["/api/results/predictions/user/{user_id}"]["get"]["responses"]["200"]
        exported["links"] = {"Erase": DETECT_LINKS["Erase"]}
    path = folder / "openapi.json"
    path.write_text(json.dumps(document))
    return path


def _answers(har: Path) -> list[tuple[str, str, int, str]]:
    """(method, path, status, response text) of every request the run sent."""
    out = []
    for entry in json.loads(har.read_text())["log"]["entries"]:
        path = re.sub(r"^https?://[^/]+", "", entry["request"]["url"]).split("?", 1)[0]
        content = entry["response"].get("content", {})
        text = content.get("text") or ""
        if content.get("encoding") == "base64":  # --report-preserve-bytes keeps the body as sent
            text = base64.b64decode(text).decode("utf-8", errors="replace")
        out.append((entry["request"]["method"], path, entry["response"]["status"], text))
    return out


@pytest.mark.parametrize("service", list(SERVICES))
def test_schemathesis_finds_no_server_error_and_no_schema_violation(stack, service, tmp_path):
    port, _, key = SERVICES[service]
    base = stack.url(port)
    document = _document_with_links(base, tmp_path)
    har = tmp_path / "run.har"
    started = time.monotonic()
    run = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "schemathesis"), "run", str(document), "--url", base,
         "--checks", CHECKS, "--max-examples", MAX_EXAMPLES, "--phases", PHASES,
         "--workers", "1", "--seed", "20261129", "--no-shrink", "--request-timeout", "60",
         "--report", "har", "--report-har-path", str(har), "--report-preserve-bytes",
         # an internal service is called as the gateway calls it: with the service token
         *(["-H", f"X-API-Key: {KEYS[key]}"] if key else ["-H", f"X-Internal-Token: {INTERNAL_TOKEN}"])],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "SCHEMATHESIS_HOOKS": "tests.system.schemathesis_hooks"})
    elapsed = time.monotonic() - started
    output = run.stdout[-8000:] + run.stderr[-2000:]
    assert run.returncode == 0, f"schemathesis found problems in {service} ({elapsed:.0f}s):\n{output}"
    # Exit 0: no check failed. Warnings (e.g. a followed link answering 404 to another
    # tenant's id, as it must) are not failures; what was reached is asserted below.

    answers = _answers(har)
    reached = Counter((method, path, status) for method, path, status, _ in answers)
    assert len(answers) >= MIN_REQUESTS[service], (len(answers), output)
    for method, prefix, status in MUST_REACH[service]:
        hits = sum(n for (m, p, s), n in reached.items() if m == method and p.startswith(prefix) and s == status)
        assert hits >= 1, f"{service}: no {status} to {method} {prefix}: {sorted(reached.items())[:40]}"
    if service.startswith("gateway"):  # the stateful phase followed a detect's links, each step
        created = {json.loads(text)["request_id"] for method, path, status, text in answers
                   if (method, path, status) == ("POST", "/api/detect", 201) and text.startswith("{")}
        # a fuzzer cannot guess a fresh request id, nor the hooks' subject in a path: these are the links
        steps = {"read": ("GET", "", 200), "feedback": ("POST", "/feedback", 201)}
        for step, (verb, suffix, status) in steps.items():
            hits = [path for method, path, got, _ in answers if method == verb and got == status
                    and re.fullmatch(rf"/api/results/predictions/([^/]+){suffix}", path)
                    and path.split("/")[4] in created]
            assert hits, f"{service}: the stateful phase never reached {step} ({verb} ... {status}) of a detected id"
        subject = f"/api/results/predictions/user/{FUZZ_SUBJECT}"
        lifecycle = [("GET", 200, "export")] + ([("DELETE", 200, "erase")] if service == "gateway-admin" else [])
        for verb, status, step in lifecycle:
            assert (verb, subject, status) in {(m, p, s) for m, p, s, _ in answers}, \
                f"{service}: the stateful phase never reached {step} ({verb} {subject} {status})"
    print(f"{service}: {len(answers)} requests in {elapsed:.1f}s, "
          f"{sum(n for (_, _, s), n in reached.items() if 200 <= s < 300)} answered 2xx")
