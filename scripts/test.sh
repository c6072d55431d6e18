#!/usr/bin/env bash
# Sets up a fresh machine and runs the whole test suite (unit and integration tests, with the
# real model and RocksDB). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The fault tests fail fsyncs and writes of a running server with `strace --inject`; the
# cluster test runs nodes behind nginx (Debian's, with gRPC proxying built in).
scripts/setup.sh strace nginx
cargo test "$@"
