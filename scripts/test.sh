#!/usr/bin/env bash
# The whole test suite: unit tests, the emulators' own tests, the end-to-end tests against a real OpenBao
# (installed pinned into .venv on first use) and the in-repo emulators, then the deterministic simulation of the
# rotation engine over thousands of seeded fault schedules (optimised build, `--profile sim`). Loopback only.
#   bash scripts/test.sh              everything
#   bash scripts/test.sh FILTER…      only `cargo test` with these arguments (the simulation's quick pass included)
#   SIM_SEEDS=10000 bash scripts/test.sh   more seeds in the simulation (SIM_CLUSTER_SEEDS: its two-engine runs)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
export BAO_BIN="$PWD/.venv/bin/bao"
# Most integration tests wait on real processes (a daemon, OpenBao, moto), not on the CPU: four at a time on two
# cores halves the suite's wall time. Their timing bounds carry slack for that load.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
# A quick pass of the simulation runs with everything else (debug build, few seeds) ...
SIM_SEEDS="${SIM_QUICK_SEEDS:-100}" SIM_CLUSTER_SEEDS="${SIM_QUICK_CLUSTER_SEEDS:-20}" \
  cargo test --workspace --all-features --locked "$@"
if [ "$#" -eq 0 ]; then
  # ... and the full one, optimised: thousands of seeds; a failing seed prints the command that replays it.
  SIM_SEEDS="${SIM_SEEDS:-3000}" SIM_CLUSTER_SEEDS="${SIM_CLUSTER_SEEDS:-300}" \
    cargo test --profile sim --locked --test sim
fi
