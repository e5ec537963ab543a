#!/usr/bin/env bash
# Build the pinned MinIO server, mc and nats-server into a cache outside the repository, and
# reuse them when they are already there. Prints the directory holding both.
#
# MinIO's community edition ships as source only; `go install` is its documented
# install. The pins are in DEVELOPERS.md; change them there and here together.
set -euo pipefail

# The requested pin, v0.0.0-20251015172955-9e49d5e7a648 (RELEASE.2025-10-15T17-29-55Z), is
# refused by the Go module proxy ("403 Forbidden: This module version is not available").
# `go list -m github.com/minio/minio@latest` resolved on 2026-11-26 to the version below;
# we pin that so every machine builds the same server.
MINIO_PIN="${MINIO_PIN:-github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c}"
# The requested mc pin, v0.0.0-20250813083541-7394ce0dd2a8, downloads but fails checksum
# verification ("verifying module: ... sum.golang.org/lookup ...: 404 Not Found"); rather
# than switch verification off we take what `@latest` resolved to on 2026-11-26.
MC_PIN="${MC_PIN:-github.com/minio/mc@v0.0.0-20250313080218-cf909e1063a9}"
# JetStream mode's engine (issue 14): a release with per-key expiry in the KV store,
# which Debian's 2.9 lacks.
NATS_PIN="${NATS_PIN:-github.com/nats-io/nats-server/v2@v2.15.3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${REPLICATOR_TOOLS_DIR:-$HOME/.cache/replicator-tools}"
BIN="$TOOLS_DIR/bin"
mkdir -p "$BIN"

log() { printf '[install-tools] %s\n' "$*" >&2; }

build() { # name pin
  local name=$1 pin=$2 stamp="$BIN/.$1.pin"
  if [[ -x "$BIN/$name" && -f "$stamp" && "$(cat "$stamp")" == "$pin" ]]; then
    log "$name: cached ($pin)"
    return
  fi
  command -v go >/dev/null || { log "go is required to build $name"; exit 1; }
  log "$name: building $pin (first time only; several minutes)"
  # CGO off: a static binary that doesn't care which libc the machine has.
  CGO_ENABLED=0 GOBIN="$BIN" go install "$pin"
  echo "$pin" >"$stamp"
}

build_minio() {
  # MinIO is built from its module source with one patch: this build's
  # trackingResponseWriter (added by upstream #21651) hides http.Flusher, so the
  # ListenBucketNotification stream never flushes and no client (mc watch, minio-py,
  # replicator) sees events until ~4 KiB have piled up. The patch forwards Flush, as
  # the fix merged in downstream forks does. See DEVELOPERS.md.
  local patch="$ROOT/scripts/patches/minio-listen-flush.patch"
  local stamp="$BIN/.minio.pin" want
  want="$MINIO_PIN+$(sha256sum "$patch" | cut -c1-12)"
  if [[ -x "$BIN/minio" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    log "minio: cached ($want)"
    return
  fi
  command -v go >/dev/null || { log "go is required to build minio"; exit 1; }
  log "minio: building $MINIO_PIN with scripts/patches/minio-listen-flush.patch (first time only; several minutes)"
  local dir src="$TOOLS_DIR/src/minio"
  dir=$(go mod download -json "$MINIO_PIN" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$src" && mkdir -p "$(dirname "$src")" && cp -r "$dir" "$src" && chmod -R u+w "$src"
  (cd "$src" && patch -p1 --quiet <"$patch")
  # CGO off: a static binary that doesn't care which libc the machine has.
  (cd "$src" && CGO_ENABLED=0 go build -o "$BIN/minio.new" .)
  mv -f "$BIN/minio.new" "$BIN/minio"  # a rename: running servers keep their binary
  rm -rf "$src"
  echo "$want" >"$stamp"
}

build_minio
build mc "$MC_PIN"
build nats-server "$NATS_PIN"
echo "$BIN"
