"""Gunicorn settings shared by the HTTP services (`gunicorn -c services/common/gunicorn_conf.py`).

Threads rather than processes: the services mostly wait on I/O (the model, the
database), so a few workers with several threads each use the 2 cores well
without multiplying memory. Every value can be overridden from the environment.
"""
# Not `config`: gunicorn takes every module-level name of this file that is one of its
# settings as that setting, and `config` is one (the path of this file).
from services.common.config import settings as _settings

workers = _settings.GUNICORN_WORKERS
threads = _settings.GUNICORN_THREADS
worker_class = "gthread"
timeout = _settings.GUNICORN_TIMEOUT
graceful_timeout = 20
keepalive = 75  # longer than the callers' idle pools, so reused connections are not cut mid-request
accesslog = None  # each service writes its own ECS access line
errorlog = "-"
# gunicorn's own lines (boot, worker timeouts) as ECS JSON like the services' logs.
logger_class = "services.common.logs.GunicornLogger"
loglevel = _settings.GUNICORN_LOG_LEVEL
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

# Optional TLS (services/common/tls.py, docs/reliability.md): both files or neither.
_tls_cert = _settings.TLS_CERT_FILE
_tls_key = _settings.TLS_KEY_FILE
if bool(_tls_cert) != bool(_tls_key):
    raise SystemExit("configuration error: set both TLS_CERT_FILE and TLS_KEY_FILE, or neither")
if _tls_cert:
    certfile, keyfile = _tls_cert, _tls_key

# Every HTTP service here is internal or calls internal ones (the gateway): no service
# token, no start. Checked in the master, because a SystemExit while a worker imports the
# app only makes gunicorn start the next worker, for ever.
from services.common.service_token import internal_token as _internal_token  # noqa: E402

_internal_token()
