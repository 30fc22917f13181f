"""Retention: delete predictions older than RETENTION_DAYS (and the feedback about them).

    python -m governance.purge [--days N] [--audit-days M] [--dry-run]     (make purge)

Works on the configured results database (DATABASE_URL, else the SQLite file under
var/), through the results service's own store code. Each run is journaled in
`audit_events` (action `retention_purge`, actor role `service`, actor `governance-purge`, counts only) and
prints the counts. Journal entries themselves are kept AUDIT_RETENTION_DAYS
(default 365: they prove who accessed what, and hold no raw identifier).
Compose and Kubernetes run it as a scheduled job.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta, timezone

from governance.store import GovernanceStore
from services.common import config



def retention_days() -> int:
    return config.RETENTION_DAYS


def audit_retention_days() -> int:
    return config.AUDIT_RETENTION_DAYS


def count_expired(store: GovernanceStore, days: int) -> int:
    return store.count_older("predictions", datetime.now(timezone.utc) - timedelta(days=days))


def purge(days: int | None = None, audit_days: int | None = None, dry_run: bool = False,
          url: str | None = None) -> dict:
    days = retention_days() if days is None else days
    audit_days = audit_retention_days() if audit_days is None else audit_days
    if days < 1 or audit_days < days:
        raise SystemExit(f"configuration error: RETENTION_DAYS={days} must be >= 1 and <= AUDIT_RETENTION_DAYS={audit_days}")
    gov = GovernanceStore(url)
    store = gov.results_store()
    result = {"database": gov.dialect, "retention_days": days, "audit_retention_days": audit_days,
              "cutoff": (datetime.now(timezone.utc) - timedelta(days=days)).isoformat(timespec="seconds"),
              "dry_run": dry_run}
    if dry_run:
        result["would_delete"] = {"predictions": count_expired(gov, days)}
    else:
        deleted = store.purge_expired(days, audit_days)
        store.journal("retention_purge", "service", "governance-purge",
                      record_count=deleted["predictions"] + deleted["feedback"])
        result["deleted"] = deleted
        result["remaining_expired"] = count_expired(gov, days)
    gov.dispose()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m governance.purge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=None,
                        help=f"retention in days (default $RETENTION_DAYS or {config.Settings.RETENTION_DAYS.default})")
    parser.add_argument("--audit-days", type=int, default=None,
                        help=f"journal retention (default $AUDIT_RETENTION_DAYS or {config.Settings.AUDIT_RETENTION_DAYS.default})")
    parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = purge(args.days, args.audit_days, args.dry_run)
    if args.json:
        print(json.dumps(result))
    elif args.dry_run:
        print(f"[dry run] {result['database']}: {result['would_delete']['predictions']} predictions older than "
              f"{result['retention_days']} days (before {result['cutoff']}) would be deleted")
    else:
        d = result["deleted"]
        print(f"{result['database']}: deleted {d['predictions']} predictions and {d['feedback']} feedback rows older than "
              f"{result['retention_days']} days (before {result['cutoff']}), {d['audit_events']} journal entries older "
              f"than {result['audit_retention_days']} days; {result['remaining_expired']} expired rows remain")
    return 0


if __name__ == "__main__":
    sys.exit(main())
