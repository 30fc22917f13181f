"""Gunicorn settings shared by the HTTP services (`gunicorn -c services/common/gunicorn_conf.py`).

Threads rather than processes: the services mostly wait on I/O (the model, the
database), so a few workers with several threads each use the 2 cores well
without multiplying memory. Every value can be overridden from the environment.
"""
import os
import sys
from pathlib import Path

workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
worker_class = "gthread"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 20
keepalive = 75  # longer than the callers' idle pools, so reused connections are not cut mid-request
accesslog = None  # each service writes its own ECS access line
errorlog = "-"
# gunicorn's own lines (boot, worker timeouts) as ECS JSON like the services' logs.
logger_class = "services.common.logs.GunicornLogger"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "warning")
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

# Optional TLS (services/common/tls.py, docs/reliability.md): both files or neither.
_tls_cert = os.environ.get("TLS_CERT_FILE", "").strip()
_tls_key = os.environ.get("TLS_KEY_FILE", "").strip()
if bool(_tls_cert) != bool(_tls_key):
    raise SystemExit("configuration error: set both TLS_CERT_FILE and TLS_KEY_FILE, or neither")
if _tls_cert:
    certfile, keyfile = _tls_cert, _tls_key

# Every HTTP service here is internal or calls internal ones (the gateway): no service
# token, no start. Checked in the master, because a SystemExit while a worker imports the
# app only makes gunicorn start the next worker, for ever.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from services.common.service_token import internal_token  # noqa: E402

internal_token()
