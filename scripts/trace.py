"""Follow one request across the services: `make trace ID=<request id>`.

Reads every `*.jsonl` log under `$VAR_DIR/log` (default var/log; or --log-dir),
keeps the ECS events whose `trace.id` is the request id, adds Triton's log lines
that mention it (triton.log, plain text), and prints them in time order with
each hop's own duration (`event.duration`) and the offset from the first event.

    python scripts/trace.py 3f2a...            # table
    python scripts/trace.py 3f2a... --json     # the raw events, one per line
Exit status 1 when the id appears nowhere.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from services.common import config
# Triton's own format: I1129 14:20:00.123456 4242 file.cc:123] message (UTC on this stack)
TRITON_LINE = re.compile(r"^([IWEV])(\d{2})(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d{1,6})\s+\d+\s+([^\]]+)\]\s?(.*)$")


def get(event: dict, dotted: str) -> Any:
    """A field by its dotted ECS name, nested ({"trace": {"id": ..}}), flat ("trace.id") or mixed."""
    if dotted in event:
        return event[dotted]
    head, _, rest = dotted.partition(".")
    if rest and isinstance(event.get(head), dict):
        return get(event[head], rest)
    return None


def parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None


def json_events(log_dir: Path, request_id: str) -> Iterator[dict]:
    for path in sorted(log_dir.glob("*.jsonl")):
        with path.open(errors="replace") as handle:
            for line in handle:
                if request_id not in line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if get(event, "trace.id") == request_id:
                    event.setdefault("_file", path.name)
                    yield event


def triton_events(log_dir: Path, request_id: str) -> Iterator[dict]:
    year = datetime.now(timezone.utc).year
    for path in sorted(log_dir.glob("triton*.log")):
        with path.open(errors="replace") as handle:
            for line in handle:
                if request_id not in line:
                    continue
                match = TRITON_LINE.match(line.strip())
                stamp = None
                if match:
                    level, month, day, hour, minute, second, fraction, origin, message = match.groups()
                    message = message.strip().strip('"')  # the python backend quotes its messages
                    stamp = datetime(year, int(month), int(day), int(hour), int(minute), int(second),
                                     int(fraction.ljust(6, "0")), tzinfo=timezone.utc).isoformat()
                else:
                    level, origin, message = "I", path.name, line.strip()
                took = re.search(r"(\d+(?:\.\d+)?) ms\b", message)  # the backend's batch time
                yield {"@timestamp": stamp, "service": {"name": "triton"}, "event": {
                           "action": "infer", **({"duration": int(float(took.group(1)) * 1e6)} if took else {})},
                       "log.level": {"I": "info", "W": "warning", "E": "error", "V": "debug"}.get(level, "info"),
                       "message": message, "log": {"origin": {"file": {"name": origin}}}, "_file": path.name}


def started(event: dict) -> datetime | None:
    """When the event's work began: its time minus its duration (ECS logs at the end)."""
    stamp = parse_time(event.get("@timestamp") or "")
    duration = get(event, "event.duration")
    if stamp and isinstance(duration, (int, float)):
        return stamp - timedelta(microseconds=duration / 1000)
    return stamp


def collect(log_dir: Path, request_id: str) -> list[dict]:
    events = [*json_events(log_dir, request_id), *triton_events(log_dir, request_id)]
    far = datetime.max.replace(tzinfo=timezone.utc)
    events.sort(key=lambda e: started(e) or far)
    return events


def render(events: list[dict], request_id: str) -> str:
    origin = next((t for t in (started(e) for e in events) if t), None)
    rows = [f"request {request_id}: {len(events)} events in "
            f"{len({get(e, 'service.name') for e in events})} services (ordered by start; "
            "start/end in ms from the first start)",
            f"{'logged at (UTC)':<24} {'start':>8} {'end':>8} {'took ms':>9} {'service':<16} {'action':<13} "
            f"{'outcome':<8} message"]
    for event in events:
        begin, end = started(event), parse_time(event.get("@timestamp") or "")
        def ms(t: datetime | None) -> str:
            return f"{(t - origin).total_seconds() * 1000:8.1f}" if t and origin else " " * 8
        duration = get(event, "event.duration")
        took = f"{duration / 1e6:9.1f}" if isinstance(duration, (int, float)) else " " * 9
        extras = [f"{field.rsplit('.', 1)[-1]}={get(event, field)}"
                  for field in ("http.response.status_code", "model.version", "detection.count")
                  if get(event, field) is not None]
        message = str(event.get("message", ""))[:90] + (f"  [{' '.join(extras)}]" if extras else "")
        rows.append(f"{(event.get('@timestamp') or '?')[:23]:<24} {ms(begin)} {ms(end)} {took} "
                    f"{str(get(event, 'service.name')):<16} {str(get(event, 'event.action') or '-'):<13} "
                    f"{str(get(event, 'event.outcome') or '-'):<8} {message}")
    hops: dict[str, float] = {}
    for event in events:
        duration = get(event, "event.duration")
        if isinstance(duration, (int, float)):
            name = str(get(event, "service.name"))
            hops[name] = max(hops.get(name, 0.0), duration / 1e6)
    if hops:
        rows.append("per hop (longest event.duration): " + ", ".join(f"{k} {v:.1f} ms" for k, v in hops.items()))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("request_id")
    parser.add_argument("--log-dir", type=Path,
                        default=Path(config.VAR_DIR) / "log")
    parser.add_argument("--json", action="store_true", help="print the matching events as JSON lines")
    args = parser.parse_args(argv)
    if not args.request_id.strip():
        parser.error("give a request id: make trace ID=<request id>")
    if not args.log_dir.is_dir():
        print(f"no log directory {args.log_dir}", file=sys.stderr)
        return 2
    events = collect(args.log_dir, args.request_id)
    if not events:
        print(f"request id {args.request_id} not found in {args.log_dir}/*.jsonl", file=sys.stderr)
        return 1
    if args.json:
        for event in events:
            print(json.dumps(event, sort_keys=True))
    else:
        print(render(events, args.request_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
