#!/usr/bin/env bash
# The one locally made base image, for machines that reach no image registry:
# Debian bookworm (minbase) with Python 3.11 and venv, built by debootstrap from
# Debian's packages and imported into the engine.
#
#   scripts/compose/local_base.sh [IMAGE]     # default car-detection-local/bookworm:python3.11
#
# The host's CA bundle goes in, so pip and apt inside containers trust whatever the
# host trusts (a TLS-inspecting proxy's CA, for one). That is why this image is for
# this machine only and must never be pushed anywhere.
set -euo pipefail

IMAGE=${1:-car-detection-local/bookworm:python3.11}
MIRROR=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
fail() { echo "local_base: $*" >&2; exit 1; }

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  exit 0
fi
[[ $(id -u) -eq 0 ]] || fail "building $IMAGE with debootstrap needs root"
if ! command -v debootstrap >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || fail "debootstrap is missing and apt-get is not available"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; } \
    || fail "apt-get could not install debootstrap"
fi

ROOTFS=$(mktemp -d /var/tmp/car-detection-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "local_base: debootstrap bookworm from $MIRROR -> $IMAGE" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
  || { tail -n 5 "$ROOTFS.log" >&2; fail "debootstrap failed (log: $ROOTFS.log)"; }
rm -f "$ROOTFS.log"
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
# Same package sources as the host (security updates included), no caches, no docs.
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s-security bookworm-security main\n' \
  "$MIRROR" "$MIRROR" "$MIRROR" >"$ROOTFS/etc/apt/sources.list"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* \
  "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "debootstrap bookworm minbase + python3 (local stand-in, not for publication)" \
  - "$IMAGE" >/dev/null
echo "local_base: built $IMAGE" >&2
