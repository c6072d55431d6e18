#!/usr/bin/env bash
# Runs the client examples against a semcache server: the Python client (clients/python/
# example.py), LiteLLM with semcache as its cache (clients/python/litellm_example.py) and the
# Node.js client (clients/node/example.js). Prints each one's output; exits non-zero if any
# fails.
#
#   scripts/clients.sh [ADDRESS]   # a running server: ADDRESS, else $SEMCACHE_ADDR, else 127.0.0.1:50051
#   scripts/clients.sh --serve     # builds semcache (dev profile, as `cargo test` does, so CI reuses
#                                  # its build), serves it on a free port with a throwaway data dir
#                                  # and a fresh bearer token (so the clients must send it), runs the
#                                  # examples, stops it. $SEMCACHE_BIN: use that binary instead.
# Against a server that requires a token, set SEMCACHE_TOKEN.
#
# Set-up, on a fresh Debian/Ubuntu machine: installs python3-venv, nodejs and npm with apt-get
# if missing (as root, or with sudo); a Python venv with clients/python/requirements.txt in
# $SEMCACHE_CLIENTS_VENV (default ~/.cache/semcache/clients-venv, reused while requirements.txt
# is unchanged); the Python stubs generated from proto/; `npm ci` in clients/node (reused while
# package-lock.json is unchanged).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
started=$(date +%s)

serve=0
address=${SEMCACHE_ADDR:-127.0.0.1:50051}
case "${1:-}" in
  --serve) serve=1 ;;
  -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
  "") ;;
  *) address=$1 ;;
esac

say() { printf '\n==> %s\n' "$*"; }

# --- system packages -----------------------------------------------------------------------
apt_install() {
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo"
    else
      echo "clients.sh: missing $*; install them (apt-get install $*) or rerun as root" >&2
      exit 1
    fi
  fi
  say "installing $* with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
((${#missing[@]} == 0)) || apt_install "${missing[@]}"

# --- Python venv, stubs --------------------------------------------------------------------
venv=${SEMCACHE_CLIENTS_VENV:-$HOME/.cache/semcache/clients-venv}
req=clients/python/requirements.txt
want=$(sha256sum "$req" | cut -d' ' -f1)
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  say "creating the Python venv $venv"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian/Ubuntu ship venv's ensurepip apart: python3-venv (python3.X-venv on some releases).
    rm -rf "$venv"
    v=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install python3-venv "python$v-venv"
    python3 -m venv "$venv"
  fi
fi
if [[ $(cat "$venv/.requirements.sha256" 2>/dev/null) != "$want" ]]; then
  say "installing $req"
  t=$(date +%s)
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  echo "$want" >"$venv/.requirements.sha256"
  echo "pip install took $(($(date +%s) - t)) s"
fi
clients/python/generate.sh "$venv/bin/python"

# --- Node modules --------------------------------------------------------------------------
lock=clients/node/package-lock.json
want_node=$(sha256sum "$lock" | cut -d' ' -f1)
if [[ ! -d clients/node/node_modules || $(cat clients/node/node_modules/.lock.sha256 2>/dev/null) != "$want_node" ]]; then
  say "npm ci in clients/node"
  (cd clients/node && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want_node" >clients/node/node_modules/.lock.sha256
fi

# --- a throwaway server (--serve) ----------------------------------------------------------
server_pid=""
data_dir=""
log=""
config=""
cleanup() {
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  [[ -z $data_dir ]] || rm -rf "$data_dir"
  [[ -z ${config:-} ]] || rm -f "$config" "$config.token"
  [[ -z $log ]] || rm -f "$log"
}
trap cleanup EXIT

if ((serve)); then
  bin=${SEMCACHE_BIN:-}
  if [[ -z $bin ]]; then
    say "building semcache (cargo build --bin semcache)"
    cargo build --bin semcache
    target_dir=$(cargo metadata --format-version 1 --no-deps |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    bin=$target_dir/debug/semcache
  fi
  models/fetch.sh >/dev/null
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  address=127.0.0.1:$port
  data_dir=$(mktemp -d)
  log=$(mktemp)
  # A token made for this run: the server keeps its digest, the clients send it.
  config=$(mktemp --suffix .toml)
  rm -f "$config.token"
  "$bin" token --name clients --token-file "$config.token" >"$config"
  SEMCACHE_TOKEN=$(cat "$config.token")
  export SEMCACHE_TOKEN
  say "serving $bin on $address (bearer token required)"
  "$bin" serve --config "$config" --listen "$address" --data-dir "$data_dir" --model-dir models/all-MiniLM-L6-v2 >"$log" 2>&1 &
  server_pid=$!
fi

say "waiting for semcache at $address to be SERVING"
if ! (cd clients/python && "$venv/bin/python" - "$address" <<'PY'
import sys
from semcache_client import SemcacheClient
with SemcacheClient(sys.argv[1]) as c:
    c.wait_until_serving(timeout=120)
print("SERVING")
PY
); then
  [[ -z $log ]] || { echo "--- server log:"; tail -n 30 "$log"; }
  exit 1
fi

# --- the examples --------------------------------------------------------------------------
failed=()
run() {
  local name=$1
  shift
  say "$name"
  local t=$(date +%s%N)
  if "$@"; then
    echo "--- $name passed ($((($(date +%s%N) - t) / 1000000)) ms)"
  else
    echo "--- $name FAILED (exit $?)"
    failed+=("$name")
  fi
}
export SEMCACHE_ADDR=$address
run "Python client (clients/python/example.py)" \
  bash -c 'cd clients/python && exec "$1" example.py "$2"' _ "$venv/bin/python" "$address"
run "LiteLLM + semcache (clients/python/litellm_example.py)" \
  bash -c 'cd clients/python && exec "$1" litellm_example.py "$2"' _ "$venv/bin/python" "$address"
run "Node.js client (clients/node/example.js)" \
  node clients/node/example.js "$address"
if ((serve)); then
  run "a call without the token is refused" \
    bash -c 'cd clients/python && exec "$1" - "$2"' _ "$venv/bin/python" "$address" <<'PY'
import sys
import grpc
from semcache_client import SemcacheClient, SemcacheError
try:
    SemcacheClient(sys.argv[1], token="").lookup("anything", "a question")
except SemcacheError as e:
    assert e.code == grpc.StatusCode.UNAUTHENTICATED, e
    print(f"refused: {e}")
else:
    sys.exit("a call without a token was served")
PY
fi

echo
if ((${#failed[@]})); then
  [[ -z $log ]] || { echo "--- server log (tail):"; tail -n 30 "$log"; }
  echo "clients.sh: FAILED: ${failed[*]} ($(($(date +%s) - started)) s)" >&2
  exit 1
fi
echo "clients.sh: all client examples passed in $(($(date +%s) - started)) s"
