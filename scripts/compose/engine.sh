#!/usr/bin/env bash
# Makes sure a Docker engine answers, starting one when none does.
#
#   scripts/compose/engine.sh          # exit 0 once `docker info` answers
#
# Order: an engine that already answers (DOCKER_HOST or the default socket) is used
# as is. Otherwise, as root, Debian's docker.io is installed when dockerd is missing
# and dockerd is started in the background (log: /var/log/car-detection-dockerd.log).
# Fails within seconds, with one line on stderr, when none of that is possible.
set -euo pipefail

LOG=${DOCKERD_LOG:-/var/log/car-detection-dockerd.log}
fail() { echo "engine: $*" >&2; exit 1; }

answers() { timeout 10 docker info >/dev/null 2>&1; }

command -v docker >/dev/null 2>&1 && answers && exit 0

if ! command -v dockerd >/dev/null 2>&1; then
  [[ $(id -u) -eq 0 ]] || fail "no Docker engine answers and dockerd is not installed (as root: apt-get install docker.io)"
  command -v apt-get >/dev/null 2>&1 || fail "no Docker engine answers, dockerd is not installed and apt-get is not available"
  echo "engine: installing Debian's docker.io" >&2
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker.io >/dev/null; } \
    || fail "no Docker engine answers and apt-get could not install docker.io"
fi
command -v docker >/dev/null 2>&1 || fail "dockerd is installed but the docker client is not"
[[ $(id -u) -eq 0 ]] || fail "no Docker engine answers and starting dockerd needs root"
if [[ -n "${DOCKER_HOST:-}" ]]; then
  fail "DOCKER_HOST=$DOCKER_HOST does not answer (unset it to use a local engine)"
fi

echo "engine: starting dockerd (log: $LOG)" >&2
# containerd comes with docker.io; dockerd starts its own when none runs.
nohup dockerd >>"$LOG" 2>&1 &
for _ in $(seq 1 60); do
  answers && exit 0
  if ! kill -0 $! 2>/dev/null; then
    fail "dockerd exited at start: $(tail -n 1 "$LOG")"
  fi
  sleep 0.5
done
fail "dockerd started but does not answer after 30 s: $(tail -n 1 "$LOG")"
