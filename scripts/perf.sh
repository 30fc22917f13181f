#!/usr/bin/env bash
# `make perf`: install Triton's perf_analyzer (PyPI package perf-analyzer) under var/tools/ and
# run loadtest/perf.py with it.
#
# The wheel holds a native binary tagged manylinux_2_38: it needs glibc >= 2.38 and the
# libstdc++ of GCC 13 or later. Where the system is older (Debian 12 ships glibc 2.36), pip
# refuses the wheel for this platform, so it is unpacked with an explicit platform tag and
# started through Debian 13's dynamic loader with Debian 13's libc6, libstdc++6 and
# libgcc-s1 beside it (fetched with apt-get download into var/tools/, nothing installed
# system-wide). Every other library (OpenSSL, zlib) comes from the system.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$REPO_ROOT/.venv/bin/python}"
TOOLS="${PERF_TOOLS_DIR:-$REPO_ROOT/var/tools}"
PERF_ANALYZER_VERSION=2.60.0
PA_DIR="$TOOLS/perf-analyzer-$PERF_ANALYZER_VERSION"
PA_BIN="$PA_DIR/perf_analyzer/bin/perf_analyzer"
RUNTIME="$TOOLS/debian13-runtime"
LAUNCHER="$TOOLS/bin/perf_analyzer"

runs_natively() {
    local said
    said="$("$PA_BIN" 2>&1 || true)"  # without arguments it prints its usage, or the loader's complaint
    [[ "$said" != *GLIBC* && "$said" != *"error while loading"* ]]
}

install_wheel() {
    [[ -x "$PA_BIN" ]] && return
    echo "perf: installing perf-analyzer==$PERF_ANALYZER_VERSION into $PA_DIR" >&2
    "$PY" -m pip install --quiet --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 \
        --target "$PA_DIR" "perf-analyzer==$PERF_ANALYZER_VERSION"
    chmod +x "$PA_BIN"
}

install_runtime() {
    local loader="$RUNTIME/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    [[ -x "$loader" ]] && return
    echo "perf: this system's C library is older than the binary needs; fetching Debian 13's" \
         "libc6, libstdc++6, libgcc-s1 into $RUNTIME" >&2
    if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
        echo "perf: needs glibc >= 2.38, or apt-get and dpkg-deb to fetch it" >&2
        exit 1
    fi
    mkdir -p "$RUNTIME/lists/partial" "$RUNTIME/cache/archives/partial" "$RUNTIME/debs" "$RUNTIME/root"
    : > "$RUNTIME/status"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
        > "$RUNTIME/sources.list"
    # A private apt state: the system's package lists and installed set stay untouched.
    local apt_opts=(-o "Dir::Etc::SourceList=$RUNTIME/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
                    -o "Dir::State::Lists=$RUNTIME/lists" -o "Dir::State::status=$RUNTIME/status"
                    -o "Dir::Cache=$RUNTIME/cache" -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1")
    apt-get "${apt_opts[@]}" -qq update
    (cd "$RUNTIME/debs" && apt-get "${apt_opts[@]}" -qq download libc6 libstdc++6 libgcc-s1)
    for deb in "$RUNTIME"/debs/*.deb; do dpkg-deb -x "$deb" "$RUNTIME/root"; done
}

write_launcher() {
    mkdir -p "$(dirname "$LAUNCHER")"
    if runs_natively; then
        printf '#!/bin/sh\nexec "%s" "$@"\n' "$PA_BIN" > "$LAUNCHER"
    else
        install_runtime
        local lib="$RUNTIME/root/usr/lib/x86_64-linux-gnu"
        printf '#!/bin/sh\nexec "%s" --library-path "%s" "%s" "$@"\n' "$lib/ld-linux-x86-64.so.2" "$lib" "$PA_BIN" \
            > "$LAUNCHER"
    fi
    chmod +x "$LAUNCHER"
}

install_wheel
[[ -x "$LAUNCHER" ]] || write_launcher
export PERF_ANALYZER="$LAUNCHER"
# This checkout first (as the Makefile does): a shared venv's editable install may point at another.
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" "$REPO_ROOT/loadtest/perf.py" "$@"
