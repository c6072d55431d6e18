#!/usr/bin/env bash
# Sets up a fresh machine and runs the whole test suite (unit and integration tests, with the
# real model and RocksDB). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The fault tests fail fsyncs and writes of a running server with `strace --inject`.
scripts/setup.sh strace
cargo test "$@"
