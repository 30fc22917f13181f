"""No secret is committed: the scan finds real-looking secrets (even on a test line) and
lets the suite's obvious fakes pass; the files generated under var/secrets are ignored by git
and none of their values appears in a tracked file."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from services.common.config import REPO_ROOT


SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |DSA |ENCRYPTED )?PRIVATE KEY-----"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "generic assigned secret": re.compile(
        r"(?i)\b(?:password|passwd|secret|api_?key|token)\b\s*[:=]\s*['\"]?(?=[A-Za-z0-9+/_\-]*\d)(?=[A-Za-z0-9+/_\-]*[A-Za-z])[A-Za-z0-9+/_\-]{24,}"),
}

# Deliberately fake values: recognised by the value itself, never by the line it sits on.
FAKE_VALUE = re.compile(r"(?i)example|dummy|changeme|placeholder|0123456789|replace_with|^\$\{|^<")

def secret_findings(text: str) -> list[tuple[str, str]]:
    """(kind, line) of every secret-looking value in `text` that is not an obvious fake."""
    findings = []
    for name, pattern in SECRET_PATTERNS.items():
        for match in pattern.finditer(text):
            value = match.group(0).split("=", 1)[-1].split(":", 1)[-1].strip(" '\"") if name == "generic assigned secret" \
                else match.group(0)
            if not FAKE_VALUE.search(value):
                line = text[text.rfind("\n", 0, match.start()) + 1: text.find("\n", match.end())]
                findings.append((name, line.strip()[:120]))
    return findings

def repository_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    return [REPO_ROOT / name for name in listed if name and (REPO_ROOT / name).is_file()]

def test_the_secret_scan_finds_a_real_looking_secret_even_in_a_test_line():
    token = "gh" + "p_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0"
    assigned = "api_key = '" + "Zq8" + "xW3vR7tY2uP5sK9mN4bL6hJ" + "'"
    assert secret_findings(f"def test_x():\n    token = '{token}'  # test\n")
    assert secret_findings(f"{assigned}  # used by the tests\n")
    assert not secret_findings("api_key = 'client-a-key-0123456789abcdefghij'\n")  # the suite's fake keys
    assert not secret_findings("PSEUDONYM_KEY=${PSEUDONYM_KEY:?set it in .env}\n")

def test_no_secret_is_committed():
    findings = []
    generated = []
    for secrets_dir in (REPO_ROOT / "var" / "secrets", REPO_ROOT / "var" / "test-stack" / "secrets"):
        if secrets_dir.is_dir():
            for path in secrets_dir.iterdir():
                generated += [v for v in re.split(r"[\s,:]+", path.read_text()) if len(v) >= 16]
    for path in repository_files():
        if path.stat().st_size > 2_000_000:
            continue
        text = path.read_text(errors="ignore")
        findings += [f"{path.relative_to(REPO_ROOT)}: {name}: {line}" for name, line in secret_findings(text)]
        findings += [f"{path.relative_to(REPO_ROOT)}: a generated secret from var/secrets" for value in generated
                     if value in text]
    assert not findings, "\n".join(findings)
    for path in ("var/secrets/api_keys", "var/tls/server.key"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT)
        assert ignored.returncode == 0, f"{path} must be ignored by git"
