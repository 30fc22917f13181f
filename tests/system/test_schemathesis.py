"""Every REST service publishes an OpenAPI 3 document, and a bounded schemathesis run
against it (on the real stack) finds no server error and no departure from the
document: status codes, content types, headers and bodies as documented, invalid
input refused with a 4xx, authentication not ignored.

Not checked: `positive_data_acceptance` (a schema cannot say "a decodable image",
so schema-valid random bytes are rightly refused), and the stateful phase (it would
multiply the run time; the stateful properties are tested directly elsewhere)."""
from __future__ import annotations

import subprocess
import time

import pytest
import yaml

from tests.conftest import INTERNAL_TOKEN, KEYS, REPO_ROOT

CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
    "unsupported_method", "missing_required_header", "ignored_auth",
])
MAX_EXAMPLES = "25"  # per operation and phase: a few hundred requests per service, seconds each
SERVICES = {
    "gateway": ("GATEWAY_PORT", REPO_ROOT / "gateway" / "openapi.yaml", ["-H", f"X-API-Key: {KEYS['admin']}"]),
    "feature-service": ("FEATURE_PORT", REPO_ROOT / "services" / "feature_service" / "openapi.yaml",
                        ["-H", f"X-Internal-Token: {INTERNAL_TOKEN}"]),
    "results-service": ("RESULTS_PORT", REPO_ROOT / "services" / "results_service" / "openapi.yaml",
                        ["-H", f"X-Internal-Token: {INTERNAL_TOKEN}"]),
}


@pytest.mark.parametrize("service", list(SERVICES))
def test_openapi_document_is_served(stack, http, service):
    port, source, _ = SERVICES[service]
    answer = http.get(stack.url(port, "/openapi.json"), timeout=5)  # no API key: it is documentation
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/json")
    document = answer.json()
    assert document == yaml.safe_load(source.read_text())
    assert document["openapi"].startswith("3.") and document["paths"]


@pytest.mark.parametrize("service", list(SERVICES))
def test_schemathesis_finds_no_server_error_and_no_schema_violation(stack, service, tmp_path):
    port, _, extra = SERVICES[service]
    base = stack.url(port)
    started = time.monotonic()
    run = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "schemathesis"), "run", f"{base}/openapi.json", "--url", base,
         "--checks", CHECKS, "--max-examples", MAX_EXAMPLES, "--phases", "examples,coverage,fuzzing",
         "--workers", "1", "--seed", "20261129", "--no-shrink", "--request-timeout", "30",
         "--report", "junit", "--report-dir", str(tmp_path), *extra],
        capture_output=True, text=True, timeout=240, cwd=tmp_path)
    elapsed = time.monotonic() - started
    output = run.stdout[-8000:] + run.stderr[-2000:]
    assert run.returncode == 0, f"schemathesis found problems in {service} ({elapsed:.0f}s):\n{output}"
    assert "No issues found" in run.stdout, output
    print(f"{service}: {[line.strip() for line in run.stdout.splitlines() if 'generated' in line]} in {elapsed:.1f}s")
