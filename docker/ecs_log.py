"""Runs a program and turns each line it prints into an ECS JSON line on stdout,
for programs that cannot log JSON themselves (tritonserver and the python
backend's TensorFlow/OpenVINO). Signals are passed on; the exit code is the
program's. Standard library only.

    python3 ecs_log.py SERVICE_NAME PROGRAM [ARG ...]
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from datetime import datetime, timezone

# glog-style prefixes: Triton "I1201 19:52:34.668659 1 file.cc:12] ...", TensorFlow the same.
LEVELS = {"I": "info", "W": "warning", "E": "error", "F": "critical"}
GLOG = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([\w./-]+:\d+)\] ?(.*)$")


def event(service: str, line: str) -> dict[str, object]:
    match = GLOG.match(line)
    level, origin, message = (LEVELS[match[1]], match[2], match[3]) if match else ("info", None, line)
    out: dict[str, object] = {
        "@timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "log.level": level, "message": message.strip('"'), "ecs.version": "1.6.0", "service.name": service,
    }
    if origin:
        out["log.origin.file.line"] = origin
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    service, command = argv[0], argv[1:]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             errors="replace", bufsize=1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda number, _frame: child.send_signal(number))
    assert child.stdout is not None
    for line in child.stdout:
        line = line.rstrip()
        if line:
            sys.stdout.write(json.dumps(event(service, line)) + "\n")
            sys.stdout.flush()
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
