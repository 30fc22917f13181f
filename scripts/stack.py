"""Start, watch and stop the local stack (make run / make up / make down).

supervisord does the process management; this script only prepares the
environment, waits until every service answers its health check, and says
where things are.

    python scripts/stack.py run    # attached; Ctrl-C stops every process
    python scripts/stack.py up     # detached; returns 0 once all are healthy
    python scripts/stack.py down
    python scripts/stack.py status
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from services.common import config
from services.common.config import REPO_ROOT, Settings, create_secret_file, settings
VENV_BIN = REPO_ROOT / ".venv" / "bin"
CONF = REPO_ROOT / "scripts" / "supervisord.conf"
START_TIMEOUT_S = config.STACK_START_TIMEOUT_S

# scripts/supervisord.conf interpolates these, so they must be in the environment: the
# declared defaults (services/common/config.py) unless set. REDIS_PORT: the stack's own
# password-protected Redis (rate limits shared by the gateway's workers), unless
# RATELIMIT_STORAGE_URI names another one.
DEFAULTS = {name: str(getattr(Settings, name).default) for name in (
    "BIND_HOST", "GATEWAY_PORT", "FEATURE_PORT", "RESULTS_PORT", "MODEL_SERVING_PORT",
    "TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT", "REDIS_PORT")}
# Without a redis-server binary: the machine's Redis, as before (no password).
FALLBACK_REDIS_URI = "redis://127.0.0.1:6379/0"


def stack_env() -> dict[str, str]:
    env = dict(os.environ)
    for name, value in DEFAULTS.items():
        env.setdefault(name, value)
    env.setdefault("VAR_DIR", Settings.VAR_DIR.resolved_default(settings))
    env["REPO_ROOT"] = str(REPO_ROOT)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def var_dir(env: dict[str, str]) -> Path:
    return Path(env["VAR_DIR"])


def _http_ok(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return answer.status == 200
        except Exception:
            return False
    return probe


def _grpc_serving(address: str) -> Callable[[], bool]:
    def probe() -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            with grpc.insecure_channel(address) as channel:
                answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            return answer.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False
    return probe


def _redis_ok(uri: str) -> Callable[[], bool]:
    def probe() -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(uri, socket_timeout=2).ping())
        except redis.RedisError:
            return False
    return probe


def health_checks(env: dict[str, str]) -> dict[str, Callable[[], bool]]:
    """In start order: each one's dependencies come before it."""
    own_redis = {"redis": _redis_ok(env["RATELIMIT_STORAGE_URI"])} if env.get("STACK_REDIS") == "1" else {}
    return {
        **own_redis,
        "triton": _http_ok(f"http://127.0.0.1:{env['TRITON_HTTP_PORT']}/v2/models/car_detector/ready"),
        "model-serving": _grpc_serving(f"127.0.0.1:{env['MODEL_SERVING_PORT']}"),
        "feature-service": _http_ok(f"http://127.0.0.1:{env['FEATURE_PORT']}/health"),
        "results-service": _http_ok(f"http://127.0.0.1:{env['RESULTS_PORT']}/ready"),
        "gateway": _http_ok(f"http://127.0.0.1:{env['GATEWAY_PORT']}/ready"),
    }


def log_tail(env: dict[str, str], service: str, lines: int = 40) -> str:
    out = []
    for path in sorted(var_dir(env).glob(f"log/{service}*")):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        if text:
            out.append(f"--- {path} (last {len(text)} lines)\n" + "\n".join(text))
    return "\n".join(out) or f"(no log for {service} under {var_dir(env) / 'log'})"


def supervisorctl(env: dict[str, str], *args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "supervisorctl"), "-c", str(CONF), *args], env=env,
                          capture_output=True, text=True, check=check)


def is_running(env: dict[str, str]) -> bool:
    return supervisorctl(env, "pid").returncode == 0


def wait_healthy(env: dict[str, str], process: subprocess.Popen | None = None) -> str | None:
    """Wait for every service; return the name of the one that never became healthy."""
    deadline = time.monotonic() + START_TIMEOUT_S
    for name, probe in health_checks(env).items():
        while not probe():
            exited = process is not None and process.poll() is not None
            if exited or time.monotonic() > deadline or _has_died(env, name):
                return name
            time.sleep(0.5)
    return None


def _has_died(env: dict[str, str], name: str) -> bool:
    status = supervisorctl(env, "status", name).stdout
    return any(state in status for state in ("FATAL", "EXITED", "BACKOFF"))


def _secret_file(env: dict[str, str], name: str) -> None:
    """`NAME_FILE` for the services: a secret generated under var/secrets on first start
    (mode 0600, kept afterwards), unless the environment already gives `NAME` or `NAME_FILE`."""
    if env.get(name) or env.get(f"{name}_FILE"):
        return
    path = var_dir(env) / "secrets" / name.lower()
    create_secret_file(path)
    env[f"{name}_FILE"] = str(path)


def prepare_redis(env: dict[str, str]) -> str:
    """Run the stack's own Redis (loopback, `requirepass` from var/secrets) unless
    RATELIMIT_STORAGE_URI names one; its password is kept in a 0600 config file,
    never on a command line."""
    include = var_dir(env) / "run" / "supervisord.d" / "redis.conf"
    include.parent.mkdir(parents=True, exist_ok=True)
    if env.get("RATELIMIT_STORAGE_URI"):
        include.unlink(missing_ok=True)
        return f"redis: {env['RATELIMIT_STORAGE_URI'].split('@')[-1]} (RATELIMIT_STORAGE_URI)"
    binary = shutil.which("redis-server", path=env.get("PATH"))
    if not binary:
        include.unlink(missing_ok=True)
        env["RATELIMIT_STORAGE_URI"] = FALLBACK_REDIS_URI
        return f"redis: no redis-server installed; rate limits use {FALLBACK_REDIS_URI} (no password)"
    _secret_file(env, "REDIS_PASSWORD")
    password = Path(env["REDIS_PASSWORD_FILE"]).read_text().strip() if env.get("REDIS_PASSWORD_FILE") \
        else env["REDIS_PASSWORD"]
    home = var_dir(env) / "redis"
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = home / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"bind 127.0.0.1\nport {env['REDIS_PORT']}\nprotected-mode yes\nrequirepass {password}\n"
                     f"save \"\"\nappendonly no\ndir {home}\nmaxmemory 96mb\nmaxmemory-policy volatile-ttl\n")
    include.write_text("\n".join([
        "[program:redis]", f"command={binary} {conf}", f"directory={home}", "priority=5",
        "stopasgroup=true", "killasgroup=true", "redirect_stderr=true",
        f"stdout_logfile={var_dir(env) / 'log' / 'redis.log'}", "stdout_logfile_maxbytes=10MB", ""]))
    env["STACK_REDIS"] = "1"
    env["RATELIMIT_STORAGE_URI"] = f"redis://:{password}@127.0.0.1:{env['REDIS_PORT']}/0"
    return f"redis: 127.0.0.1:{env['REDIS_PORT']} (password in {env.get('REDIS_PASSWORD_FILE', 'REDIS_PASSWORD')})"


def prepare(env: dict[str, str]) -> None:
    for sub in ("log", "run", "secrets"):
        (var_dir(env) / sub).mkdir(parents=True, exist_ok=True)
    # Service-to-service token (every internal service refuses callers without it) and the
    # key of Triton's restricted model-control/shared-memory APIs, generated like the API keys.
    _secret_file(env, "INTERNAL_TOKEN")
    _secret_file(env, "TRITON_ADMIN_KEY")
    print(prepare_redis(env), flush=True)
    if not env.get("API_KEYS") and not env.get("API_KEYS_FILE"):
        os.environ["VAR_DIR"] = env["VAR_DIR"]
        from gateway.auth import default_keys_file, ensure_keys_file

        ensure_keys_file(default_keys_file())
    # Prometheus when installed (else one line saying so); fresh multiprocess metric files.
    from observability.local_prometheus import prepare as prepare_prometheus

    print(prepare_prometheus(env, var_dir(env)), flush=True)


def announce(env: dict[str, str]) -> None:
    keys = "API_KEYS (environment)" if env.get("API_KEYS") else env.get("API_KEYS_FILE") or var_dir(env) / "secrets" / "api_keys"
    print(f"stack ready: gateway http://127.0.0.1:{env['GATEWAY_PORT']}  "
          f"triton grpc 127.0.0.1:{env['TRITON_GRPC_PORT']}  adapter grpc 127.0.0.1:{env['MODEL_SERVING_PORT']}\n"
          f"API keys (key:role): {keys}\nlogs: {var_dir(env) / 'log'}", flush=True)


def up(env: dict[str, str]) -> int:
    if is_running(env):
        print("stack already running; checking health")
    else:
        prepare(env)
        subprocess.run([str(VENV_BIN / "supervisord"), "-c", str(CONF)], env=env, check=True)
    failed = wait_healthy(env)
    if failed:
        print(f"service {failed} did not become healthy within {START_TIMEOUT_S:.0f}s:\n{log_tail(env, failed)}",
              file=sys.stderr)
        down(env)
        return 1
    announce(env)
    return 0


def down(env: dict[str, str]) -> int:
    if not is_running(env):
        print("stack not running")
        return 0
    pid_file = var_dir(env) / "run" / "supervisord.pid"
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    supervisorctl(env, "shutdown")
    for _ in range(120):  # supervisord stops its children before it exits
        if pid is None or not _alive(pid):
            break
        time.sleep(0.5)
    print("stack stopped")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run(env: dict[str, str]) -> int:
    if is_running(env):
        print("a detached stack is running; `make down` first", file=sys.stderr)
        return 1
    prepare(env)
    process = subprocess.Popen([str(VENV_BIN / "supervisord"), "-n", "-c", str(CONF)], env=env)
    # Ctrl-C reaches supervisord too (same process group); it stops every child.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGTERM))
    failed = wait_healthy(env, process)
    if failed and process.poll() is None:
        print(f"service {failed} is not healthy yet:\n{log_tail(env, failed)}", file=sys.stderr)
    elif not failed:
        announce(env)
        print("Ctrl-C stops every process.", flush=True)
    return process.wait()


def status(env: dict[str, str]) -> int:
    if not is_running(env):
        print("stack not running")
        return 3
    print(supervisorctl(env, "status").stdout, end="")
    for name, probe in health_checks(env).items():
        print(f"{name:16} {'healthy' if probe() else 'NOT healthy'}")
    return 0


if __name__ == "__main__":
    commands = {"up": up, "down": down, "run": run, "status": status}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(commands)}")
    sys.exit(commands[sys.argv[1]](stack_env()))
