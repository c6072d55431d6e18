#!/usr/bin/env bash
# Installs what building and serving semcache needs on a fresh Debian/Ubuntu machine and
# fetches the default model. Safe to run again: it only does what is missing. Arguments name
# further commands to install from the Debian package of the same name (the tests need strace).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
# librocksdb-sys generates its bindings with bindgen, which needs libclang; RocksDB is C++.
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
for tool in "$@"; do
  command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool ]] || missing+=("$tool")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "installing ${missing[*]} ..."
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || {
  echo "setup.sh: cargo not found; install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
}
models/fetch.sh
