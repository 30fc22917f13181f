"""The one settings object: every environment variable of the system, declared once.

Each variable is a `Var` on `Settings` with its default and meaning. `config.NAME`
(the same as `settings.NAME`) reads it from the environment at the time of the call,
typed, so a change of os.environ by a test or a tool is seen and a bad value fails
loudly naming the variable (machinery: services/common/settings.py).

docs/configuration.md is generated from these declarations (`make config-docs`;
tests/unit/test_config.py checks it is current), and docker-compose.yml, k8s/ and
.env.example may name only variables declared here, with the same defaults
(tests/deploy/test_config_files.py). Ports follow ../shared/CONTRACT.md.
"""
from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

from services.common.settings import REPO_ROOT, SettingsBase, Var

__all__ = ["REPO_ROOT", "Settings", "Var", "secret", "secret_list", "settings", "var_dir"]

_NET, _MODEL, _LIMITS, _XAI = "Ports and addresses", "Model", "Limits, timeouts, workers", "Explanations (/api/explain)"
_DATA, _SEC, _OBS, _DEPLOY = "Storage, data and retention", "Secrets and TLS", "Logs and metrics", "Deployment files only"
_TOOLS = "Tools: training, benchmarks, scripts"


class Settings(SettingsBase):
    # --- ports and addresses -------------------------------------------------------------
    GATEWAY_PORT = Var(8080, "gateway HTTP port, the single public entry", _NET)
    FEATURE_PORT = Var(5001, "feature service HTTP port", _NET)
    RESULTS_PORT = Var(5002, "results service HTTP port", _NET)
    MODEL_SERVING_PORT = Var(50051, "gRPC model-serving adapter port", _NET)
    MODEL_SERVING_METRICS_PORT = Var(9151, "the adapter's Prometheus /metrics port", _NET)
    TRITON_HTTP_PORT = Var(8000, "Triton HTTP (KServe v2) port", _NET)
    TRITON_GRPC_PORT = Var(8001, "Triton gRPC port", _NET)
    TRITON_METRICS_PORT = Var(8002, "Triton metrics port", _NET)
    BIND_HOST = Var("127.0.0.1", "interface the adapter and its metrics listen on (0.0.0.0 in containers)", _NET)
    FEATURE_SERVICE_URL = Var("http://127.0.0.1:{FEATURE_PORT}", "the gateway's feature service (https:// for TLS)", _NET)
    RESULTS_SERVICE_URL = Var("http://127.0.0.1:{RESULTS_PORT}", "the gateway's results service (https:// for TLS)", _NET)
    MODEL_SERVING_ADDR = Var("127.0.0.1:{MODEL_SERVING_PORT}", "the gateway's gRPC adapter, host:port", _NET)
    TRITON_GRPC_URL = Var("127.0.0.1:{TRITON_GRPC_PORT}", "Triton gRPC, host:port (adapter and explanations)", _NET)
    TRITON_HTTP_URL = Var("127.0.0.1:{TRITON_HTTP_PORT}", "Triton HTTP, for the model registry's reload requests", _NET)
    GATEWAY_URL = Var("http://127.0.0.1:{GATEWAY_PORT}", "the gateway as the audit and the demo reach it", _NET)

    # --- model -----------------------------------------------------------------------------
    TRITON_MODEL_NAME = Var("car_detector", "the Triton model served", _MODEL)
    CONFIDENCE_THRESHOLD: Var[float | None] = Var(
        None, "detections below this score are not returned (adapter) or explained; unset: the served version's "
        "operating_threshold from its model_metadata.json", _MODEL, kind="float")
    MODEL_REPOSITORY = Var("{REPO_ROOT}/model_repository", "the Triton model repository (registry, metadata)", _MODEL)
    MODEL_REGISTRY_PATH = Var("{REPO_ROOT}/governance/model_registry.json", "the model registry (hashes of each version)",
                              _MODEL)
    MODEL_REGISTRY_ENFORCE = Var("strict", "'strict': refuse a version that is unregistered, unreadable or not visible; "
                                 "'warn': serve it with a warning (development only); a mismatch is always refused",
                                 _MODEL)
    MODEL_GUARD_RECHECK_S = Var(1.0, "how often the serving guard re-stats the served version's files", _MODEL)
    MODEL_INPUT_WIDTH: Var[int | None] = Var(
        None, "width of the feature service's model-ready image; unset: input_size of the newest version's metadata",
        _MODEL, kind="int")
    MODEL_INPUT_HEIGHT: Var[int | None] = Var(None, "height of the model-ready image; unset: from the metadata", _MODEL,
                                              kind="int")

    # --- limits, timeouts, workers -----------------------------------------------------------
    MAX_UPLOAD_BYTES = Var(10 * 1024 * 1024, "largest image upload, checked before decoding", _LIMITS)
    MAX_IMAGE_PIXELS = Var(24_000_000, "largest image in budget pixels, checked from the header: width x height, "
                           "counted twice for alpha, 16/32-bit, float and CMYK modes (services/common/images.py)", _LIMITS)
    DECODE_CONCURRENCY = Var(2, "large image decodes (above 4 M budget pixels) at a time per process, so a worker's "
                             "memory is bounded by a few worst-case images, not by its threads", _LIMITS)
    READY_CACHE_S = Var(1.0, "/ready answers from a dependency probe at most this old, per process", _LIMITS)
    GRPC_MAX_CONCURRENT_RPCS = Var(32, "RPCs the adapter holds in flight; one more is refused RESOURCE_EXHAUSTED", _LIMITS)
    INTERNAL_TIMEOUT_S = Var(10.0, "budget of every internal call (gateway -> services, adapter -> Triton)", _LIMITS)
    RETRY_AFTER_S = Var(5, "Retry-After of a 503 when a dependency is down", _LIMITS)
    BREAKER_FAILURES = Var(5, "consecutive failures that open a dependency's circuit breaker", _LIMITS)
    BREAKER_RESET_S = Var(5.0, "seconds an open breaker refuses calls before one trial", _LIMITS)
    HEALTH_PROBE_INTERVAL_S = Var(2.0, "how often the adapter probes Triton for its gRPC health status", _LIMITS)
    GRPC_WORKERS = Var(16, "threads of the adapter's gRPC server", _LIMITS)
    RATE_LIMIT = Var("50 per second;2000 per minute", "rate limits of the gateway per API key and route (moving windows; "
                     "syntax of the limits library)", _LIMITS)
    RATELIMIT_STORAGE_URI = Var("memory://", "where rate-limit counters live (redis://... to share them); the local "
                                "stack: its own password-protected Redis unless set", _LIMITS)
    REDIS_PORT = Var(6380, "port of the local stack's own Redis (scripts/stack.py, loopback, requirepass)", _LIMITS)
    GUNICORN_WORKERS = Var(2, "worker processes per HTTP service", _LIMITS)
    GUNICORN_THREADS = Var(8, "threads per worker", _LIMITS)
    GUNICORN_TIMEOUT = Var(60, "seconds before gunicorn restarts a silent worker", _LIMITS)
    GUNICORN_LOG_LEVEL = Var("warning", "gunicorn's own log level", _LIMITS)

    # --- explanations ----------------------------------------------------------------------
    EXPLAIN_BATCH_SIZE = Var(8, "occluded copies per Triton request (at most the model's max_batch_size)", _XAI)
    EXPLAIN_MAX_DETECTIONS = Var(5, "detections explained per image", _XAI)
    EXPLAIN_DEADLINE_S = Var(60.0, "total time one explanation may spend in Triton calls; then 503", _XAI)
    EXPLAIN_CONCURRENCY = Var(1, "explanations at a time per gateway worker; one more is answered 429", _XAI)
    EXPLAIN_MAX_PIXELS = Var(2_100_000, "largest image explained (each of ~100 occluded copies is re-encoded); 413 above",
                             _XAI)

    # --- storage, data and retention --------------------------------------------------------
    VAR_DIR = Var("{REPO_ROOT}/var", "runtime files: logs, SQLite file, generated secrets", _DATA)
    REPORTS_DIR = Var("{VAR_DIR}/reports", "where `make audit` writes its reports (the console shows the newest)", _DATA)
    DATABASE_URL = Var("sqlite:///{VAR_DIR}/results.db", "the results database (postgresql://... in deployments)", _DATA)
    DATA_DIR = Var("{REPO_ROOT}/../shared/data/car-object-detection", "the labelled data set (training, drift baseline)",
                   _DATA)
    DRIFT_BASELINE_PATH = Var("{REPO_ROOT}/governance/baseline_features.json", "the drift baseline's feature statistics",
                              _DATA)
    RETENTION_DAYS = Var(30, "predictions older than this are purged", _DATA)
    COMPACT_LOCK_TIMEOUT_MS = Var(5000, "longest wait, after an erasure, for older snapshots and for the exclusive lock "
                                  "of the PostgreSQL table rewrite (VACUUM FULL); then compacted: false", _DATA)
    AUDIT_RETENTION_DAYS = Var(365, "erasure/purge journal entries older than this are purged", _DATA)
    RETENTION_INTERVAL_S = Var(86400, "seconds between two purges of the compose retention job", _DATA, read_by="compose")

    # --- secrets and TLS -------------------------------------------------------------------
    API_KEYS = Var("", "the gateway's keys, comma-separated key:role (client, dpo, admin); unset: generated into "
                   "var/secrets/api_keys", _SEC, kind="secret")
    API_KEYS_FILE = Var("", "file holding API_KEYS instead", _SEC)
    PSEUDONYM_KEY = Var("", "key of the hash that replaces user ids (database, logs); unset: generated into var/secrets/",
                        _SEC, kind="secret")
    PSEUDONYM_KEY_FILE = Var("", "file holding PSEUDONYM_KEY instead", _SEC)
    PSEUDONYM_PREVIOUS_KEYS = Var("", "after a key rotation: the earlier keys, comma-separated, still used for lookups "
                                  "and erasure; unset: var/secrets/pseudonym_previous_keys if it exists", _SEC, kind="secret")
    PSEUDONYM_PREVIOUS_KEYS_FILE = Var("", "file holding PSEUDONYM_PREVIOUS_KEYS instead (one key per line)", _SEC)
    INTERNAL_TOKEN = Var("", "service-to-service token, required: the feature and results services and the adapter "
                         "refuse callers without it, and no service starts without it; the local stack generates it "
                         "into var/secrets/internal_token", _SEC, kind="secret")
    INTERNAL_TOKEN_FILE = Var("", "file holding INTERNAL_TOKEN instead", _SEC)
    TRITON_ADMIN_KEY = Var("", "key of Triton's restricted APIs (model control, shared memory, trace, logging); the "
                           "local stack generates it into var/secrets/triton_admin_key", _SEC, kind="secret")
    TRITON_ADMIN_KEY_FILE = Var("", "file holding TRITON_ADMIN_KEY instead", _SEC)
    REDIS_PASSWORD = Var("", "password of the rate-limit Redis; the local stack generates it into "
                         "var/secrets/redis_password", _SEC, kind="secret")
    REDIS_PASSWORD_FILE = Var("", "file holding REDIS_PASSWORD instead", _SEC)
    METRICS_TOKEN = Var("", "bearer token every /metrics requires; unset: generated into var/secrets/", _SEC, kind="secret")
    METRICS_TOKEN_FILE = Var("", "file holding METRICS_TOKEN instead", _SEC)
    TLS_CA_FILE = Var("", "CA that every client verifies servers against (default: the system's)", _SEC)
    TLS_CERT_FILE = Var("", "HTTP services' server certificate (with TLS_KEY_FILE: HTTPS)", _SEC)
    TLS_KEY_FILE = Var("", "HTTP services' server key", _SEC)
    GRPC_TLS_CERT_FILE = Var("", "the adapter's gRPC server certificate (default: TLS_CERT_FILE when MODEL_SERVING_TLS)", _SEC)
    GRPC_TLS_KEY_FILE = Var("", "the adapter's gRPC server key", _SEC)
    MODEL_SERVING_TLS = Var(False, "TLS on the gateway -> adapter hop", _SEC)
    TRITON_TLS = Var(False, "TLS on the hops to Triton (Triton started with its --grpc-use-ssl flags)", _SEC)
    POSTGRES_USER = Var("results", "PostgreSQL user of the results database", _SEC, read_by="compose")
    POSTGRES_PASSWORD = Var("", "PostgreSQL password (required by compose)", _SEC, read_by="compose", kind="secret")
    POSTGRES_DB = Var("results", "PostgreSQL database name", _SEC, read_by="compose")

    # --- logs and metrics ------------------------------------------------------------------
    LOG_LEVEL = Var("INFO", "level of the services' ECS JSON logs", _OBS)
    SERVICE_NAME = Var("", "service.name in log lines (default: from the running app)", _OBS)
    LOGSTASH_HOST = Var("", "ship logs to this Logstash TCP input too (empty: stdout only)", _OBS)
    LOGSTASH_PORT = Var(5000, "Logstash TCP JSON input port", _OBS)
    LOGSTASH_QUEUE_SIZE = Var(10000, "log lines held while Logstash is unreachable (then the oldest are dropped)", _OBS)
    LOGSTASH_SEND_TIMEOUT_S = Var(5.0, "socket timeout of one send to Logstash", _OBS)
    LOGSTASH_EXIT_FLUSH_S = Var(2.0, "seconds a stopping process waits for queued lines to ship", _OBS)
    LOGSTASH_FLAP_WINDOW_S = Var(60.0, "a failure this soon after a recovery continues the same outage notice", _OBS)
    CHROMIUM_BIN = Var("", "Chromium that renders the audit report's PDF (default: chromium on PATH)", _OBS)
    METRICS_DIR = Var("", "prometheus-client multiprocess directory (default: under VAR_DIR when under gunicorn)", _OBS)

    # --- deployment files only -------------------------------------------------------------
    IMAGE_TAG = Var("dev", "tag of the locally built images", _DEPLOY, read_by="compose")
    COMPOSE_PROJECT_NAME = Var("car-detection", "docker compose project name (prefix of containers and volumes)", _DEPLOY,
                               read_by="compose")
    TLS_DIR = Var("./var/compose/tls", "host folder of the compose stack's CA and server certificates", _DEPLOY,
                  read_by="compose")
    PYTHON_IMAGE = Var("python:3.11.14-slim-bookworm", "base image of the Python services", _DEPLOY, read_by="compose")
    TRITON_IMAGE = Var("nvcr.io/nvidia/tritonserver:25.08-py3", "base image of Triton", _DEPLOY, read_by="compose")
    MODEL_BASE_IMAGE = Var("busybox:1.37.0", "base image of the model-repository image", _DEPLOY, read_by="compose")
    POSTGRES_IMAGE = Var("postgres:17.6-alpine", "PostgreSQL image", _DEPLOY, read_by="compose")
    REDIS_IMAGE = Var("redis:7.4.10-alpine", "Redis image (rate-limit counters)", _DEPLOY, read_by="compose")
    PROMETHEUS_IMAGE = Var("prom/prometheus:v3.5.0", "Prometheus image", _DEPLOY, read_by="compose")
    POSTGRES_PORT = Var(5432, "host port of PostgreSQL", _DEPLOY, read_by="compose")
    ELASTICSEARCH_PORT = Var(9200, "host port of Elasticsearch", _DEPLOY, read_by="compose")
    KIBANA_PORT = Var(5601, "host port of Kibana", _DEPLOY, read_by="compose")
    PROMETHEUS_PORT = Var(9090, "host port of Prometheus", _DEPLOY, read_by="compose")
    KONG_HTTP_PORT = Var(8800, "host port of Kong's HTTP proxy", _DEPLOY, read_by="compose")
    KONG_GRPC_PORT = Var(9080, "host port of Kong's gRPC (HTTP/2) proxy", _DEPLOY, read_by="compose")


    # --- tools (defaults of their command-line options) -----------------------------------
    BACKBONE_WEIGHTS = Var("imagenet", "training's backbone initialisation: imagenet (the offline file), none, or a .h5 path",
                           _TOOLS, read_by="tools")
    INIT_FROM = Var("", "training: warm start from this version directory's weights (empty: no warm start)", _TOOLS,
                    read_by="tools")
    TRAIN_BUDGET_MINUTES = Var(30.0, "training's wall-clock budget (the learning-rate schedule ends with it)", _TOOLS,
                               read_by="tools")
    TRAIN_LR = Var(1.5e-3, "training's peak learning rate", _TOOLS, read_by="tools")
    INPUT_SIZE = Var("512x288", "training and cross-validation: the network's input, WIDTHxHEIGHT", _TOOLS, read_by="tools")
    PATCH_SIZE = Var("320x192", "training and cross-validation: the random crop trained on, WIDTHxHEIGHT", _TOOLS,
                     read_by="tools")
    CROSSVAL_REPORT = Var("{REPO_ROOT}/var/reports/crossval/crossval.json",
                          "training: the cross-validation whose calibration and figures a new version records", _TOOLS,
                          read_by="tools")
    TRITON_RELOAD_GRPC = Var("", "training: reload the model on this Triton (host:port) after export; empty: none",
                             _TOOLS, read_by="tools")
    BENCH_CONCURRENCY = Var("1,4,16", "make bench: client concurrencies, comma-separated", _TOOLS, read_by="tools")
    BENCH_SECONDS = Var(5.0, "make bench: seconds per path, concurrency and round", _TOOLS, read_by="tools")
    BENCH_ROUNDS = Var(2, "make bench: interleaved rounds", _TOOLS, read_by="tools")
    BENCH_STRICT = Var(False, "make bench: exit 1 when a target fails", _TOOLS, read_by="tools")
    BENCH_PATHS = Var("", "make bench: the paths to measure, comma-separated (empty: all)", _TOOLS, read_by="tools")
    BENCH_NAIVE_PORT = Var(29999, "make bench: port of the naive Flask baseline", _TOOLS, read_by="tools")
    VARIANTS_BASE_PORT = Var(38000, "make triton-variants: first port of the variants' Tritons", _TOOLS, read_by="tools")
    PERF_ANALYZER = Var("", "make perf: the perf_analyzer binary (empty: on PATH, as scripts/perf.sh installs it)",
                        _TOOLS, read_by="tools")
    PERF_CONCURRENCY = Var("1:8", "make perf: concurrency range START:END", _TOOLS, read_by="tools")
    PERF_INTERVAL_MS = Var(4000, "make perf: perf_analyzer's measurement window", _TOOLS, read_by="tools")
    PERF_BENCH_SECONDS = Var(5.0, "make perf: seconds of bench's Triton-direct client per concurrency", _TOOLS,
                             read_by="tools")
    LOG_BENCH_EVENTS = Var(20000, "make log-shipping-bench: events logged per run", _TOOLS, read_by="tools")
    LOCUST_CLIENT_KEY = Var("", "make loadtest: the client key (empty: API_KEYS or the stack's generated keys)", _TOOLS,
                            read_by="tools", kind="secret")
    LOCUST_DPO_KEY = Var("", "make loadtest: the dpo key (empty: API_KEYS or the stack's generated keys)", _TOOLS,
                         read_by="tools", kind="secret")
    DEMO_API_KEY = Var("", "make demo: the client key (empty: API_KEYS or the stack's generated keys)", _TOOLS,
                       read_by="tools", kind="secret")
    STACK_START_TIMEOUT_S = Var(240.0, "make up/run: seconds every service has to become healthy", _TOOLS,
                                read_by="tools")


settings = Settings()


def __getattr__(name: str) -> Any:
    """`config.NAME` of a declared variable is `settings.NAME`, read now."""
    if Settings.declared(name):
        return getattr(settings, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def var_dir() -> Path:
    """Runtime files (logs, SQLite file, generated secrets); git ignores it."""
    path = Path(settings.VAR_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_secret_once(path: Path, text: str) -> None:
    """`text` at `path` (mode 0600) unless the file exists. O_EXCL: when several
    processes start at once, exactly one writes it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def create_secret_file(path: Path, generate_bytes: int = 32) -> None:
    """A fresh random secret at `path` unless the file exists."""
    write_secret_once(path, secrets.token_hex(generate_bytes))


def secret(name: str, generate_bytes: int = 32) -> str:
    """A secret from `$NAME`, else from the file named by `$NAME_FILE`, else from
    `var/secrets/<name>` (generated on first use, mode 0600) so a fresh clone works
    without any secret ever being committed."""
    if not (Settings.declared(name) and Settings.declared(f"{name}_FILE")):
        raise RuntimeError(f"secret {name} is not declared in services/common/config.py")
    value = os.environ.get(name, "").strip()
    if value:
        return value
    file_name = os.environ.get(f"{name}_FILE", "").strip()
    path = Path(file_name) if file_name else var_dir() / "secrets" / name.lower()
    if not path.exists():
        if file_name:
            raise SystemExit(f"configuration error: {name}_FILE={file_name} does not exist")
        create_secret_file(path, generate_bytes)
    for _ in range(50):  # another worker may be between create and write
        value = path.read_text().strip()
        if value:
            return value
        time.sleep(0.02)
    raise SystemExit(f"configuration error: secret file {path} is empty")


def secret_list(name: str) -> list[str]:
    """Optional secrets (e.g. earlier keys still needed for lookups): `$NAME` comma-separated,
    else the file named by `$NAME_FILE`, else `var/secrets/<name>` if it exists; one per line.
    Never generated."""
    if not (Settings.declared(name) and Settings.declared(f"{name}_FILE")):
        raise RuntimeError(f"secret {name} is not declared in services/common/config.py")
    value = os.environ.get(name, "").strip()
    if not value:
        file_name = os.environ.get(f"{name}_FILE", "").strip()
        path = Path(file_name) if file_name else var_dir() / "secrets" / name.lower()
        if file_name and not path.exists():
            raise SystemExit(f"configuration error: {name}_FILE={file_name} does not exist")
        value = path.read_text() if path.exists() else ""
    return [part.strip() for part in value.replace("\n", ",").split(",") if part.strip()]
