"""Gunicorn settings shared by the HTTP services (`gunicorn -c services/common/gunicorn_conf.py`).

Threads rather than processes: the services mostly wait on I/O (the model, the
database), so a few workers with several threads each use the 2 cores well
without multiplying memory. Every value can be overridden from the environment.
"""
import os

workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
worker_class = "gthread"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 20
keepalive = 75  # longer than the callers' idle pools, so reused connections are not cut mid-request
accesslog = None  # each service writes its own ECS access line
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "warning")
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
