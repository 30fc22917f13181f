"""`python -m services.results_service.migrations [revision]` (`make migrate`): bring the
database at DATABASE_URL (else var/results.db) to `revision` (default: the latest)."""
from __future__ import annotations

import sys

from services.results_service.migrations import current_revision, upgrade_to_head
from services.results_service.store import database_url, make_engine


def main(argv: list[str]) -> int:
    revision = argv[0] if argv else "head"
    engine = make_engine(database_url(), upgrade=False)
    before = current_revision(engine)
    upgrade_to_head(engine, revision)
    print(f"results database ({engine.dialect.name}): revision {before or 'none'} -> {current_revision(engine)}")
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
