#!/bin/sh
# Writes the secret files deploy/compose.yaml mounts (once; an existing file is kept):
#   postgres_password         the PostgreSQL password (read by the postgres image, uid 999)
#   schoolgate.toml           schoolgate's settings with the database URL (read by uid 10001)
#   schoolgate-monitor.toml   the same for the monitor, which reaches PostgreSQL on 127.0.0.1
# Run as root from deploy/: ./secrets/generate.sh
set -eu
cd "$(dirname "$0")"
umask 077
if [ ! -s postgres_password ]; then
  python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > postgres_password
fi
password=$(cat postgres_password)
write_config() {  # file host
  [ -s "$1" ] && return 0
  printf 'database_url = "postgresql+psycopg://schoolgate:%s@%s:5432/schoolgate"\n' \
    "$password" "$2" > "$1"
}
write_config schoolgate.toml postgres
write_config schoolgate-monitor.toml 127.0.0.1
# Compose (without Swarm) bind-mounts these files as they are: owner and mode must let the
# one container user read them, and nobody else.
if [ "$(id -u)" = 0 ]; then
  chown 999:999 postgres_password
  chown 10001:10001 schoolgate.toml schoolgate-monitor.toml
fi
chmod 0400 postgres_password schoolgate.toml schoolgate-monitor.toml
echo "secrets written in $(pwd)"
