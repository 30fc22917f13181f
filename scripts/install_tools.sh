#!/usr/bin/env bash
# Tools the deployment tests use that pip cannot provide: docker-compose, to run
# `docker-compose config` on docker-compose.yml (tests/deploy/). Idempotent and
# never fatal: without root or apt it says so and exits 0, and the tests that
# need the tool skip with the reason.
set -euo pipefail

if command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "install_tools: docker-compose is missing; as root: apt-get install -y docker-compose (compose tests will skip)" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_tools: docker-compose is missing and apt-get is not available (compose tests will skip)" >&2
  exit 0
fi
echo "install_tools: installing docker-compose (Debian package)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; }; then
  echo "install_tools: apt-get could not install docker-compose (compose tests will skip)" >&2
fi
exit 0
