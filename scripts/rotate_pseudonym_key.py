"""Rotate the pseudonymisation key (`make rotate-pseudonym-key`; governance/RGPD.md §7).

    rotate                 new current key; the old one joins the previous keys
    status                 key ids in use, and how many stored rows each one hashed
    retire KEY_ID          drop a previous key once no stored row carries its id

Works on the key files of the local stack (var/secrets/pseudonym_key and
var/secrets/pseudonym_previous_keys, or PSEUDONYM_KEY_FILE / PSEUDONYM_PREVIOUS_KEYS_FILE).
Where the keys come from the environment (compose, Kubernetes secrets), it prints the
steps instead. Restart the services afterwards: they read the keys at start.
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

import sqlalchemy as sa

from services.common import config, pseudonym


def _paths() -> tuple[Path, Path]:
    secrets_dir = config.var_dir() / "secrets"
    current = Path(config.PSEUDONYM_KEY_FILE.strip() or secrets_dir / "pseudonym_key")
    previous = Path(config.PSEUDONYM_PREVIOUS_KEYS_FILE.strip() or secrets_dir / "pseudonym_previous_keys")
    return current, previous


def _write(path: Path, text: str) -> None:
    """Atomically, mode 0600: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _from_environment() -> bool:
    return bool(config.PSEUDONYM_KEY.strip() or config.PSEUDONYM_PREVIOUS_KEYS.strip())


def _rows_per_key() -> dict[str, int]:
    from services.results_service.store import feedback, make_engine, predictions

    engine = make_engine()
    counts: dict[str, int] = {}
    with engine.connect() as connection:
        for table in (predictions, feedback):
            for key_id, count in connection.execute(sa.select(table.c.key_id, sa.func.count()).group_by(table.c.key_id)):
                counts[key_id] = counts.get(key_id, 0) + int(count)
    engine.dispose()
    return counts


def rotate() -> int:
    if _from_environment():
        print("The keys come from the environment. To rotate: generate a key "
              "(python -c 'import secrets; print(secrets.token_hex(32))'), set PSEUDONYM_PREVIOUS_KEYS to the old "
              "PSEUDONYM_KEY followed by the previous keys (comma-separated), PSEUDONYM_KEY to the new one, in the "
              "secret of every service, then restart them all.")
        return 2
    current_path, previous_path = _paths()
    old = config.secret("PSEUDONYM_KEY")  # created on first use if the stack never ran
    previous = config.secret_list("PSEUDONYM_PREVIOUS_KEYS")
    new = secrets.token_hex(32)
    # Previous keys first: if the second write fails, the old key is still known either way.
    _write(previous_path, "\n".join([old, *[key for key in previous if key != old]]) + "\n")
    _write(current_path, new + "\n")
    pseudonym.keyring.cache_clear()
    ids = [key.key_id for key in pseudonym.keyring()]
    print(f"new key id {ids[0]}; previous key ids {', '.join(ids[1:])}")
    print("restart the services (make down && make up) so that they hash under the new key")
    return 0


def status() -> int:
    counts = _rows_per_key()
    for index, key in enumerate(pseudonym.keyring()):
        print(f"{key.key_id}  {'current ' if index == 0 else 'previous'}  {counts.pop(key.key_id, 0)} rows")
    for key_id, count in counts.items():
        print(f"{key_id}  UNKNOWN   {count} rows (their key is not configured: they cannot be found by user id)")
    return 0


def retire(key_id: str, force: bool) -> int:
    if _from_environment():
        print(f"The keys come from the environment: remove key {key_id} from PSEUDONYM_PREVIOUS_KEYS and restart.")
        return 2
    keys = pseudonym.keyring()
    if keys[0].key_id == key_id:
        print(f"{key_id} is the current key; rotate first", file=sys.stderr)
        return 1
    remaining = _rows_per_key().get(key_id, 0)
    if remaining and not force:
        print(f"{remaining} stored rows still carry key {key_id}: retiring it would make them unfindable by user id "
              f"(wait for the retention purge, or pass --force)", file=sys.stderr)
        return 1
    kept = [key.secret.decode() for key in keys[1:] if key.key_id != key_id]
    if len(kept) == len(keys) - 1:
        print(f"no previous key has id {key_id}", file=sys.stderr)
        return 1
    _write(_paths()[1], "".join(f"{key}\n" for key in kept))
    print(f"retired {key_id}; restart the services")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("rotate")
    commands.add_parser("status")
    retiring = commands.add_parser("retire")
    retiring.add_argument("key_id")
    retiring.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "rotate":
        return rotate()
    if args.command == "status":
        return status()
    return retire(args.key_id, args.force)


if __name__ == "__main__":
    sys.exit(main())
