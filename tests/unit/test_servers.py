"""`make test` on a machine where no PostgreSQL or Redis runs: the fixtures start real
throwaway servers (tests/servers.py) instead of failing, and remove them afterwards."""
from __future__ import annotations

import psycopg2
import redis

from tests.servers import Postgres, Redis, free_port


def test_nothing_at_the_postgres_address_starts_a_throwaway_server():
    server = Postgres.at_or_start(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    try:
        assert server.owned and server.data_dir.is_dir()
        with psycopg2.connect(server.admin_dsn) as connection, connection.cursor() as cursor:
            cursor.execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('kept'); SELECT v, current_setting('server_version_num')::int FROM t")
            value, version = cursor.fetchone()
        assert value == "kept" and version >= 130000  # PostgreSQL >= 13, as the results service needs
    finally:
        server.stop()
    assert not server.data_dir.exists() and not server.ready()


def test_nothing_at_the_redis_address_starts_a_throwaway_server_that_can_be_stopped_and_started():
    server = Redis.at_or_start(f"redis://127.0.0.1:{free_port()}")
    try:
        assert server.owned
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
