"""With CI=true a skip for a missing tool or file fails the run (tests/conftest.py), at
collection (a module-level importorskip) as well as in a test; only a skip that says it
needs the internet is let through. Each case runs in a pytest of its own with the
project's conftest as a plugin, so the hook under test is the real one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import INTERNET_SKIP, REPO_ROOT

CASES = {
    "in_a_test": "import pytest\n\ndef test_x():\n    pytest.skip('promtool is not installed')\n",
    "by_a_marker": "import pytest\n\n@pytest.mark.skipif(True, reason='kubectl is not installed')\ndef test_x():\n    pass\n",
    "at_collection": "import pytest\npytest.importorskip('no_such_module_for_the_ci_test')\n\ndef test_x():\n    pass\n",
    "in_a_fixture": "import pytest\n\n@pytest.fixture\ndef tool():\n    pytest.skip('no Docker engine')\n\n"
                    "def test_x(tool):\n    pass\n",
}


def _run(tmp_path: Path, source: str, ci: str | None) -> subprocess.CompletedProcess:
    test = tmp_path / "test_case.py"
    test.write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(test)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ci_true_turns_a_skip_for_a_missing_tool_into_a_failure(tmp_path: Path, case: str) -> None:
    strict = _run(tmp_path, CASES[case], "true")
    assert strict.returncode != 0, strict.stdout
    assert "CI=true: nothing may be skipped" in strict.stdout, strict.stdout
    relaxed = _run(tmp_path, CASES[case], None)  # elsewhere the same skip is only reported
    # pytest's own exit code: 5 (no test ran) when the whole module was skipped
    assert relaxed.returncode == (5 if case == "at_collection" else 0), relaxed.stdout
    assert "1 skipped" in relaxed.stdout and "CI=true" not in relaxed.stdout, relaxed.stdout


def test_ci_true_lets_only_the_internet_skip_through(tmp_path: Path) -> None:
    source = f"import pytest\n\ndef test_x():\n    pytest.skip('{INTERNET_SKIP}: the vulnerability service is unreachable')\n"
    done = _run(tmp_path, source, "true")
    assert done.returncode == 0 and "1 skipped" in done.stdout, done.stdout
