#!/usr/bin/env bash
# What the proxy costs and what three nodes on one machine do, in one run:
#   1. the hop: Lookup latency of one client straight to the node that owns the namespace and
#      through nginx, alternating, ROUNDS times each, for misses (a forward pass each) and for
#      exact hits (no model: the hop's share is largest there);
#   2. batches: one client sending 640 new questions one Lookup at a time, then as BatchLookups
#      of 64, straight to one node;
#   3. throughput: 32 clients of new questions on one namespace (one node busy), then three
#      such loads at once on namespaces that the ring puts on three different nodes.
# On a 2-core machine the three nodes share the cores, so the cluster figure is a lower bound
# for nodes on their own machines.
#
#   scripts/cluster-bench.sh [ROUNDS]     (default 3; release build, SEMCACHE_BIN overrides)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rounds=${1:-3}
bin=${SEMCACHE_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/semcache}
[[ -x $bin ]] || (cd "$root" && cargo build --release --bin semcache)
export SEMCACHE_BIN=$bin
base=${SEMCACHE_BENCH_PORT:-51700}
dir=$(mktemp -d)
trap '"$root/scripts/cluster.sh" down "$dir" >/dev/null; rm -rf "$dir"' EXIT
"$root/scripts/cluster.sh" up "$dir" 3 "$base"
proxy="http://127.0.0.1:$base"

# The node (n1..n3) that the ring gives namespace $1.
node_of() {
  "$bin" store --addr "$proxy" --namespace "$1" "where does this namespace live" "here" >/dev/null
  "$bin" stats --addr "$proxy" --nodes n1,n2,n3 --namespace "$1" --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["nodes"][0]["node"])'
}

# p50 and p99 (ms) of the `$1` line (hit or miss) of a `semcache bench` report on stdin.
quantiles() { awk -v kind="$1" '$1 == kind { print $3, $5 }'; }

# The URL of the node that owns namespace $1, straight (not through nginx).
direct_to() {
  local node
  node=$(node_of "$1")
  echo "http://127.0.0.1:$((base + ${node#n}))"
}

throughput() { awk '/lookups answered/ { print $(NF-1) }'; }
for kind in miss hit; do
  ns="hop-$kind"
  ratio=$([[ $kind == miss ]] && echo 0 || echo 1)
  direct=$(direct_to "$ns")
  for ((r = 1; r <= rounds; r++)); do
    for via in direct proxy; do
      addr=$([[ $via == direct ]] && echo "$direct" || echo "$proxy")
      read -r p50 p99 < <("$bin" bench --addr "$addr" --namespace "$ns" --clients 1 --requests 300 \
        --entries 50 --hit-ratio "$ratio" --keep | quantiles "$kind")
      echo "hop $kind round $r $via p50_ms $p50 p99_ms $p99"
    done
  done
done

direct=$(direct_to batch)
for ((r = 1; r <= rounds; r++)); do
  single=$("$bin" bench --addr "$direct" --namespace batch --clients 1 --requests 640 --hit-ratio 0 --keep | throughput)
  batched=$("$bin" bench --addr "$direct" --namespace batch --clients 1 --requests 640 --hit-ratio 0 --keep \
    --batch 64 | throughput)
  echo "batch round $r single_lookups_per_s $single batch64_lookups_per_s $batched"
done

# Three namespaces, one per node.
declare -A on_node=()
for ((i = 0; ${#on_node[@]} < 3 && i < 100; i++)); do
  node=$(node_of "load-$i")
  [[ -n ${on_node[$node]:-} ]] || on_node[$node]="load-$i"
done
for ((r = 1; r <= rounds; r++)); do
  one=$("$bin" bench --addr "$proxy" --namespace "${on_node[n1]}" --clients 32 --requests 1500 --hit-ratio 0 | throughput)
  pids=()
  for node in n1 n2 n3; do
    "$bin" bench --addr "$proxy" --namespace "${on_node[$node]}" --clients 32 --requests 1500 --hit-ratio 0 \
      >"$dir/load-$node.txt" &
    pids+=($!)
  done
  wait "${pids[@]}"
  total=$(cat "$dir"/load-n*.txt | throughput | awk '{ s += $1 } END { printf "%.1f", s }')
  echo "throughput round $r one_node_lookups_per_s $one three_nodes_lookups_per_s $total"
done
