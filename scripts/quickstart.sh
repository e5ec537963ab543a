#!/usr/bin/env bash
# Set up this machine (idempotent) and run replicator once against a local default:
# two MinIO servers on 127.0.0.1, sample objects in the source, one reconcile, the
# result. Everything it starts it also stops; run it as often as you like.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bootstrap
exec python "$ROOT/scripts/quickstart.py" "$@"
