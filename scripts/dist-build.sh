#!/usr/bin/env bash
# Builds the binary that ships (image and Debian package): static glibc (crt-static), `dist` profile (fat LTO, one
# codegen unit, no symbols). Prints its path on stdout. The Dockerfile's builder stage runs the same command.
set -euo pipefail
cd "$(dirname "$0")/.."
target="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --profile dist --locked --target "$target" -p token-rotator >&2
bin="${CARGO_TARGET_DIR:-$PWD/target}/$target/dist/token-rotator"
# A static binary has no interpreter: it runs on scratch and on any distribution's glibc or musl host.
if readelf -l "$bin" | grep -q "program interpreter"; then
  echo "$bin is dynamically linked; the image and the package need a static binary" >&2
  exit 1
fi
echo "$bin"
