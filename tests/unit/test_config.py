"""The settings object: one declaration per variable, read live, typed; the docs generated from it."""
from __future__ import annotations

import json
import re

import pytest

from scripts import config_docs
from services.common import config, model_info
from services.common.config import REPO_ROOT, Settings

# Environment reads outside the settings object that are not this project's configuration:
# gunicorn's own variable, prometheus-client's directory (it reads it itself), Keras's and
# TensorFlow's own, the Triton model's CAR_DETECTOR_* overrides (it runs inside Triton, with
# nothing of the project importable), and whole-environment copies for child processes.
ALLOWED_ENV_LINES = ('os.environ.get("SERVER_SOFTWARE"', 'os.environ["PROMETHEUS_MULTIPROC_DIR"]', '"KERAS_HOME"',
                     '"TF_ENABLE_ONEDNN_OPTS"', 'f"CAR_DETECTOR_{key}"', "os.environ.items()", 'os.environ["VAR_DIR"] =',
                     'os.environ.get("USER")', 'os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL"',
                     'os.environ.setdefault("CUDA_VISIBLE_DEVICES"', '{**os.environ', 'dict(os.environ)')
LAYERS = ("services", "gateway", "training", "loadtest", "governance", "scripts")
# scripts/compose runs on the system python3 before any virtualenv exists; a one-off
# measurement script names the tests' own database.
NOT_CHECKED = ("scripts/compose/", "scripts/compaction_cost.py")


def test_docs_configuration_md_is_generated_from_the_declarations():
    assert config_docs.OUT.read_text() == config_docs.render(), "docs/configuration.md is stale: run `make config-docs`"
    for name in Settings.variables():
        assert f"| `{name}` |" in config_docs.OUT.read_text()


def test_every_variable_has_a_meaning_a_group_and_a_kind():
    variables = Settings.variables()
    assert len(variables) > 60
    for name, var in variables.items():
        assert var.name == name and re.fullmatch(r"[A-Z][A-Z0-9_]*", name)
        assert len(var.meaning) > 10 and var.group and var.kind in ("int", "float", "bool", "str", "secret")
        assert var.read_by in ("services", "compose", "tools")


def test_the_services_read_the_environment_only_through_the_settings_object():
    offenders = []
    for layer in LAYERS:
        for path in (REPO_ROOT / layer).rglob("*.py"):
            if path.name in ("config.py", "settings.py") or "_pb2" in path.name or \
                    str(path.relative_to(REPO_ROOT)).startswith(NOT_CHECKED):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"os\.environ|os\.getenv|getenv\(", line) and not any(a in line for a in ALLOWED_ENV_LINES):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert not offenders, "read these through services/common/config.py:\n" + "\n".join(offenders)
    assert "os.environ.get" in (REPO_ROOT / "training" / "triton_model.py").read_text()  # the allowance is still needed


def test_values_are_read_when_asked_typed_and_defaults_follow_other_settings(monkeypatch):
    monkeypatch.delenv("FEATURE_SERVICE_URL", raising=False)
    monkeypatch.setenv("FEATURE_PORT", "6123")
    assert config.FEATURE_PORT == 6123 and config.FEATURE_SERVICE_URL == "http://127.0.0.1:6123"
    monkeypatch.setenv("FEATURE_SERVICE_URL", "https://features.internal:443")
    assert config.settings.FEATURE_SERVICE_URL == "https://features.internal:443"
    monkeypatch.setenv("MODEL_SERVING_TLS", "yes")
    assert config.MODEL_SERVING_TLS is True
    monkeypatch.setenv("INTERNAL_TIMEOUT_S", "2.5")
    assert config.INTERNAL_TIMEOUT_S == 2.5
    monkeypatch.delenv("BREAKER_FAILURES", raising=False)
    assert config.BREAKER_FAILURES == Settings.BREAKER_FAILURES.default == 5


@pytest.mark.parametrize(("name", "value", "words"), [
    ("GATEWAY_PORT", "80a", "an integer"), ("BREAKER_RESET_S", "soon", "a number"), ("TRITON_TLS", "maybe", "a boolean"),
])
def test_a_bad_value_stops_the_process_naming_the_variable(monkeypatch, name, value, words):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=f"{name}='{value}' is not {words}"):
        getattr(config, name)


def test_an_undeclared_name_is_an_error():
    with pytest.raises(AttributeError):
        config.NOT_A_SETTING  # noqa: B018
    with pytest.raises(RuntimeError, match="not declared"):
        config.secret("NOT_A_SECRET")


def test_the_operating_threshold_is_the_served_versions_unless_overridden(monkeypatch, tmp_path):
    monkeypatch.delenv("CONFIDENCE_THRESHOLD", raising=False)
    monkeypatch.setenv("MODEL_REPOSITORY", str(tmp_path))
    versions = tmp_path / "car_detector"
    for version, metadata in {"1": {"validation_metrics": {"threshold": 0.5}}, "2": {"operating_threshold": 0.45},
                              "3": {"input_size": {"width": 320, "height": 160}}}.items():
        (versions / version).mkdir(parents=True)
        (versions / version / "model_metadata.json").write_text(json.dumps(metadata))
    assert model_info.operating_threshold("2") == 0.45
    assert model_info.operating_threshold("1") == 0.5  # the older key
    assert model_info.operating_threshold("3") == model_info.FALLBACK_THRESHOLD
    assert model_info.operating_threshold("9") == model_info.FALLBACK_THRESHOLD  # no such version
    monkeypatch.setenv("CONFIDENCE_THRESHOLD", "0.3")
    assert model_info.operating_threshold("2") == 0.3
    assert model_info.input_size() == (320, 160)  # the newest version's
    monkeypatch.setenv("MODEL_INPUT_WIDTH", "100")
    monkeypatch.setenv("MODEL_INPUT_HEIGHT", "50")
    assert model_info.input_size() == (100, 50)


def test_the_repositorys_served_model_carries_its_threshold_and_input_size(monkeypatch):
    monkeypatch.delenv("CONFIDENCE_THRESHOLD", raising=False)
    monkeypatch.delenv("MODEL_REPOSITORY", raising=False)
    newest = model_info.newest_version()
    metadata = json.loads((REPO_ROOT / "model_repository" / "car_detector" / newest / "model_metadata.json").read_text())
    assert model_info.operating_threshold(newest) == metadata["operating_threshold"]
    assert model_info.input_size() == (metadata["input_size"]["width"], metadata["input_size"]["height"])


def test_gunicorn_takes_from_its_config_file_only_real_settings():
    """gunicorn applies every module-level name of gunicorn_conf.py that matches one of its
    settings: an imported module called `config` once replaced its `config` setting."""
    import runpy
    import types

    from gunicorn.config import Config

    names = runpy.run_path(str(REPO_ROOT / "services" / "common" / "gunicorn_conf.py"))
    settings = Config().settings
    applied = {name: value for name, value in names.items() if name in settings}
    assert {"workers", "threads", "timeout", "worker_class", "logger_class"} <= set(applied)
    assert not [name for name, value in applied.items() if isinstance(value, types.ModuleType)]
    assert applied["workers"] == Settings.GUNICORN_WORKERS.default
    cfg = Config()
    for name, value in applied.items():
        cfg.set(name, value)  # gunicorn validates each value as it loads the file
