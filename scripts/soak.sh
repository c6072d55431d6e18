#!/usr/bin/env bash
# Soak test: a release server on a free loopback port under mixed load for a bounded time,
# with its resident memory and the clients' errors sampled as it goes.
#
#   scripts/soak.sh [SECONDS]      # default 600; SEMCACHE_BIN overrides the binary
#
# The load, all through the public CLI against one server:
#   - lookups: `semcache bench` rounds of 2,000 lookups from 16 clients, 70% exact repeats of
#     50 stored questions and 30% new questions (each a forward pass), namespace kept between
#     rounds;
#   - stores: `semcache import` of 1,000 generated lines into a second namespace, round after
#     round (the same questions again: each Store replaces the older answer);
#   - export: `semcache export` of everything every 30 s;
#   - capacity: the import namespace is capped at 500 entries, so eviction runs throughout.
# Every call carries a bearer token. Every 10 s it records the server's RSS (VmRSS) and the errors seen; at the end it prints
# RSS at start, peak and end, and the error counts, and exits non-zero on any error or if the
# server died.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
duration=${1:-600}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/semcache/target}"

bin=${SEMCACHE_BIN:-}
if [[ -z $bin ]]; then
  cargo build --release --bin semcache
  bin=$CARGO_TARGET_DIR/release/semcache
fi
models/fetch.sh >/dev/null

work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr=http://127.0.0.1:$port
cat >"$work/semcache.toml" <<'TOML'
[namespaces.soak-stores]
max_entries = 500
TOML
# With a token, as a server reachable by others runs: every call pays for the check.
"$bin" token --name soak --token-file "$work/token" >>"$work/semcache.toml"
SEMCACHE_TOKEN=$(cat "$work/token")
export SEMCACHE_TOKEN
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" --model-dir models/all-MiniLM-L6-v2 \
  --config "$work/semcache.toml" >"$work/server.log" 2>&1 &
server=$!
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  kill "$server" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

for _ in $(seq 300); do
  grep -q "serving" "$work/server.log" 2>/dev/null && break
  sleep 0.2
done
grep -q "serving" "$work/server.log" || { echo "soak: the server did not start"; tail "$work/server.log"; exit 1; }

python3 - "$work/import.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for n in range(1000):
        f.write(json.dumps({"query": f"How do I configure option {n} of the soak-test product on a small team?",
                            "response": f"Soak answer {n}. " * 20,
                            "usage": {"input_tokens": 30, "output_tokens": 300, "cost_usd": 0.001}}) + "\n")
PY
"$bin" import "$work/import.jsonl" --addr "$addr" --namespace soak-stores >/dev/null 2>&1 || true
rss() { awk '/^VmRSS/ {print $2}' "/proc/$server/status" 2>/dev/null || echo 0; }
errors_file=$work/errors
: >"$errors_file"
end=$(($(date +%s) + duration))

# Lookup load.
(
  while (($(date +%s) < end)); do
    out=$("$bin" bench --addr "$addr" --clients 16 --requests 2000 --hit-ratio 0.7 --entries 50 \
      --namespace soak-lookups --keep 2>&1) || echo "bench failed: $out" >>"$errors_file"
    line=$(grep -o 'refused (RESOURCE_EXHAUSTED): .*' <<<"$out" || true)
    [[ $line == "refused (RESOURCE_EXHAUSTED): 0" ]] || echo "bench: $line" >>"$errors_file"
  done
) &
pids+=($!)
# Store load.
(
  while (($(date +%s) < end)); do
    "$bin" import "$work/import.jsonl" --addr "$addr" --namespace soak-stores >"$work/import.out" 2>&1 ||
      echo "import failed: $(tail -2 "$work/import.out")" >>"$errors_file"
  done
) &
pids+=($!)
# Exports.
(
  while (($(date +%s) < end)); do
    "$bin" export --addr "$addr" --output "$work/export.jsonl" >/dev/null 2>"$work/export.err" ||
      echo "export failed: $(tail -1 "$work/export.err")" >>"$errors_file"
    sleep 30
  done
) &
pids+=($!)

start_rss=$(rss)
peak=$start_rss
echo "soak: $duration s against $addr; RSS at start ${start_rss} KiB"
while (($(date +%s) < end)); do
  sleep 10
  kill -0 "$server" 2>/dev/null || { echo "soak: the server died"; tail -20 "$work/server.log"; exit 1; }
  now=$(rss)
  ((now > peak)) && peak=$now
  printf 'soak: t=%4ss RSS %7s KiB, errors so far %s\n' "$((duration - end + $(date +%s)))" "$now" "$(wc -l <"$errors_file")"
done
wait "${pids[@]}" 2>/dev/null || true
end_rss=$(rss)
entries=$(wc -l <"$work/export.jsonl" 2>/dev/null || echo 0)
errors=$(wc -l <"$errors_file")
echo "soak: done. RSS start ${start_rss} KiB, peak ${peak} KiB, end ${end_rss} KiB; last export ${entries} entries; errors ${errors}"
grep -o 'traffic since start.*' "$work/server.log" | tail -1 || true
if ((errors > 0)); then
  sort "$errors_file" | uniq -c | head -20
  exit 1
fi
