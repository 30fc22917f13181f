"""How long the erasure's compaction (VACUUM FULL, services/results_service/store.py) locks
a predictions table of N rows: `python scripts/compaction_cost.py [N ...]` creates a
throwaway PostgreSQL database (TEST_PG_ADMIN_DSN, default the local server), fills it with
N realistic rows, times ResultsStore.compact twice, and drops it (governance/RGPD.md §7)."""
from __future__ import annotations

import json
import os
import sys
import time
import uuid

import sqlalchemy as sa

from services.results_service.store import ResultsStore, make_engine

ADMIN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DETECTIONS = json.dumps([{"class_name": "car", "confidence": 0.9, "bbox": {"x_min": 281.4, "y_min": 187.9, "x_max": 327.0, "y_max": 222.6}}])
FEATURES = json.dumps({"width": 676, "height": 380, "format": "JPEG", "mode": "RGB", "brightness": 70.9,
                       "contrast": 40.1, "sharpness": 12.3, "saturation": 0.31})


def measure(rows: int) -> tuple[str, list[float]]:
    name = f"compaction_cost_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        engine = make_engine(ADMIN.rsplit("/", 1)[0] + f"/{name}")
        with engine.begin() as connection:
            connection.execute(sa.text(
                "INSERT INTO predictions (request_id, user_hash, key_id, client_id, detections, detection_count, "
                "features, model_name, model_version, inference_time_ms, created_at) "
                "SELECT 'r' || g, md5(g::text) || md5((g + 1)::text), 'abcdef01', 'c' || (g % 10), "
                "CAST(:d AS json), 1, CAST(:f AS json), 'car_detector', '2', 12.5, now() FROM generate_series(1, :n) g"),
                {"d": DETECTIONS, "f": FEATURES, "n": rows})
            size = connection.execute(sa.text("SELECT pg_size_pretty(pg_total_relation_size('predictions'))")).scalar_one()
        store, times = ResultsStore(engine), []
        for _ in range(2):
            started = time.perf_counter()
            store.compact(["predictions"])
            times.append(time.perf_counter() - started)
        engine.dispose()
        return size, times
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def main(argv: list[str]) -> int:
    for rows in [int(a) for a in argv] or [10_000, 100_000]:
        size, times = measure(rows)
        print(f"{rows:>9} rows  {size:>8}  VACUUM FULL {', '.join(f'{t:.2f} s' for t in times)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
