#!/usr/bin/env bash
# Makes sure a Docker engine answers, starting one when none does, and that a compose
# client is there (Debian's docker-compose is installed, as root, when neither
# `docker compose` nor docker-compose is).
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

apt_install() {
  [[ $(id -u) -eq 0 ]] || fail "$1 is missing (as root: apt-get install $2)"
  command -v apt-get >/dev/null 2>&1 || fail "$1 is missing and apt-get is not available"
  echo "engine: installing Debian's $2" >&2
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq --no-install-recommends "$2" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$2" >/dev/null; }; } \
    || fail "apt-get could not install $2"
}

if ! { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; }; then
  apt_install "a compose client (docker compose or docker-compose)" docker-compose
fi

command -v docker >/dev/null 2>&1 && answers && exit 0

command -v dockerd >/dev/null 2>&1 || apt_install "no Docker engine answers and dockerd" docker.io
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
