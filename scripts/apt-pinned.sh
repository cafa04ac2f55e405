# Sourced by the install scripts: `apt_pinned PACKAGE=VERSION...` installs Debian packages at pinned versions.
# Debian stable keeps only the newest revision of a package; if a point release replaced a pinned one, the same
# upstream version is accepted with a warning, anything else is refused. The upstream version is VERSION up to its
# last '-' (2.42.0+ds-5+deb12u1 → 2.42.0+ds); a Debian-native version has no '-', and its stable updates append
# "+debNNuN" (2.116.3+deb12u1 → 2.116.3). Needs root or
# passwordless sudo, and apt-get. Packages' services are not started (policy-rc.d exit 101 while installing).
apt_pinned() {
  local as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      as_root=(sudo -n)
    else
      echo "installing $* needs root: run as root (or with passwordless sudo), or install them yourself" >&2
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "installing $* needs apt-get (Debian); install them yourself" >&2
    return 1
  fi
  if [ -z "${APT_PINNED_UPDATED:-}" ]; then
    "${as_root[@]}" apt-get update -qq
    APT_PINNED_UPDATED=1
  fi
  local specs=() spec pkg want upstream available version
  for spec in "$@"; do
    pkg="${spec%%=*}"; want="${spec#*=}"
    if [ "${want%-*}" != "$want" ]; then upstream="${want%-*}-"; else upstream="${want%%+deb*}+deb"; fi
    available=$(apt-cache madison "$pkg" | awk -F' *[|] *' '{print $2}')
    if printf '%s\n' "$available" | grep -qxF "$want"; then
      version="$want"
    else
      version=$(printf '%s\n' "$available" | while read -r v; do [ "${v#"$upstream"}" != "$v" ] && echo "$v"; done | head -n 1 || true)
      if [ -z "$version" ]; then
        echo "$pkg=$want (or any ${upstream}*) is not in the apt sources; available:" >&2
        printf '  %s\n' $available >&2
        return 1
      fi
      echo "warning: $pkg=$want is gone from the apt sources; using $version (same upstream)" >&2
    fi
    specs+=("$pkg=$version")
  done
  echo "installing Debian ${specs[*]}" >&2
  local made_policy="" status=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${as_root[@]}" chmod 0755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${specs[@]}" \
    >/dev/null || status=$?
  if [ -n "$made_policy" ]; then
    "${as_root[@]}" rm -f /usr/sbin/policy-rc.d
  fi
  [ "$status" -eq 0 ] || echo "installing ${specs[*]} failed" >&2
  return "$status"
}
