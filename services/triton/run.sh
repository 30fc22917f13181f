#!/usr/bin/env bash
# Local Triton Inference Server for the car_detector model (used by the process manager).
#
# Uses the tritonserver binary shipped inside the nvidia-pytriton wheel in .venv, so no
# container or system install is needed. Runs in the foreground (exec) so SIGTERM from the
# process manager reaches tritonserver directly and it shuts down cleanly.
#
# Environment (all optional):
#   MODEL_REPOSITORY     model repository root (default <repo>/model_repository)
#   TRITON_HTTP_PORT     8000    TRITON_GRPC_PORT 8001    TRITON_METRICS_PORT 8002
#   TRITON_LOG_VERBOSE   0       VENV  <repo>/.venv
#   BIND_HOST            127.0.0.1 (HTTP, gRPC and metrics listen on loopback only)
#   TRITON_ADMIN_KEY / TRITON_ADMIN_KEY_FILE   key of the restricted APIs (below)
#   TRITON_EXTRA_ARGS    extra flags appended verbatim
#
# Restricted APIs: model control (load/unload, repository index), shared-memory
# registration, trace and log settings answer only requests carrying the key in the
# header `triton-admin-key` (gRPC metadata: `triton-grpc-protocol-triton-admin-key`);
# health, metadata, model config, statistics and inference stay open (notebooks,
# perf_analyzer). A model loaded through model control
# runs its python code, so that API is for the operator's tools only
# (services/common/service_token.py: triton_admin_headers()). scripts/stack.py generates
# the key into var/secrets; without one a random key nobody holds closes those APIs.
#
# Model control mode "explicit" with --load-model=car_detector: the model is loaded once at
# start-up (latest version, version_policy latest 1) and never reloaded behind our back.
# "poll" was tried first: the python backend writes model.py's __pycache__ into the version
# dir on the first load (the stub ignores PYTHONDONTWRITEBYTECODE), the poller sees that as a
# change and loads the whole model a second time right after start-up. To serve a newly
# trained version without a restart: `python -m training.train ... --triton 127.0.0.1:8001`
# (or any client calling load_model("car_detector")), or restart this process.
# CUDA/DCGM warnings at start-up are harmless: this machine has no GPU.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)"
VENV="${VENV:-$REPO_ROOT/.venv}"
PY="$VENV/bin/python"
MODEL_REPOSITORY="${MODEL_REPOSITORY:-$REPO_ROOT/model_repository}"

if [[ ! -x "$PY" ]]; then
  echo "run.sh: no Python virtualenv at $VENV (run 'make run' or create .venv first)" >&2
  exit 1
fi
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PYVER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
TRITON_DIR="$SITE/pytriton/tritonserver"
TRITONSERVER="$TRITON_DIR/bin/tritonserver"
if [[ ! -x "$TRITONSERVER" ]]; then
  echo "run.sh: tritonserver not found at $TRITONSERVER (is nvidia-pytriton installed in $VENV?)" >&2
  exit 1
fi
if [[ ! -d "$MODEL_REPOSITORY" ]]; then
  echo "run.sh: model repository not found: $MODEL_REPOSITORY" >&2
  exit 1
fi

# The python backend needs a stub built for this Python version next to libtriton_python.so.
STUB_SRC="$TRITON_DIR/python_backend_stubs/$PYVER/triton_python_backend_stub"
BACKEND_DIR="$TRITON_DIR/backends"
STUB_DST="$BACKEND_DIR/python/triton_python_backend_stub"
if [[ ! -f "$STUB_SRC" ]]; then
  echo "run.sh: no python backend stub for Python $PYVER in $TRITON_DIR/python_backend_stubs" >&2
  exit 1
fi
if ! cmp -s "$STUB_SRC" "$STUB_DST" 2>/dev/null; then
  cp "$STUB_SRC" "$STUB_DST"
  chmod +x "$STUB_DST"
fi

# Shared libraries bundled by the wheel; the venv first on PATH so the stub's embedded
# Python finds the venv (TensorFlow, numpy < 2) rather than a system interpreter.
LIBS="$SITE/nvidia_pytriton.libs"
[[ -d "$TRITON_DIR/external_libs" ]] && LIBS="$TRITON_DIR/external_libs:$LIBS"
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$VENV/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512 VNNI/BF16/AMX;
# on AVX2-only CPUs (many AMD EPYC hosts) it falls back to Eigen, which costs this model
# ~35 % more CPU per image (docs/performance.md). On everywhere; set 0 to compare.
export TF_ENABLE_ONEDNN_OPTS="${TF_ENABLE_ONEDNN_OPTS:-1}"
export PYTHONDONTWRITEBYTECODE=1  # honoured by tools started here; the stub ignores it

ADMIN_KEY="${TRITON_ADMIN_KEY:-}"
if [[ -z "$ADMIN_KEY" && -n "${TRITON_ADMIN_KEY_FILE:-}" ]]; then
  ADMIN_KEY="$(tr -d '[:space:]' < "$TRITON_ADMIN_KEY_FILE")"
fi
if [[ -z "$ADMIN_KEY" ]]; then
  ADMIN_KEY="$("$PY" -c 'import secrets; print(secrets.token_hex(32))')"
fi
RESTRICTED="model-repository,shared-memory,trace,logging:triton-admin-key=$ADMIN_KEY"
BIND="${BIND_HOST:-127.0.0.1}"

# shellcheck disable=SC2086  # TRITON_EXTRA_ARGS is a list of flags on purpose
exec "$TRITONSERVER" \
  --model-repository="$MODEL_REPOSITORY" \
  --backend-directory="$BACKEND_DIR" \
  --http-address "$BIND" \
  --grpc-address "$BIND" \
  --metrics-address "$BIND" \
  --http-port "${TRITON_HTTP_PORT:-8000}" \
  --grpc-port "${TRITON_GRPC_PORT:-8001}" \
  --metrics-port "${TRITON_METRICS_PORT:-8002}" \
  --http-restricted-api="$RESTRICTED" \
  --grpc-restricted-protocol="$RESTRICTED" \
  --model-control-mode=explicit \
  --load-model=car_detector \
  --strict-readiness=true \
  --exit-timeout-secs=10 \
  --backend-config=python,shm-default-byte-size=16777216 \
  --log-verbose="${TRITON_LOG_VERBOSE:-0}" \
  ${TRITON_EXTRA_ARGS:-}
