#!/usr/bin/env bash
# Sets up a fresh machine and serves with the default model and an embedded RocksDB in ./data.
# Extra arguments go to `semcache serve` (see `--help`); every flag also has a SEMCACHE_* env var.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
exec cargo run --release --bin semcache -- serve "$@"
