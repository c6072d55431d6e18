#!/usr/bin/env bash
# A semcache cluster on one machine: N nodes behind nginx's consistent-hash ring.
#
#   scripts/cluster.sh up DIR N BASE_PORT   nodes n1..nN on 127.0.0.1:BASE_PORT+1..+N (data in
#                                           DIR/nK/, pid in DIR/nK.pid, log in DIR/nK.log) and
#                                           nginx on 127.0.0.1:BASE_PORT; waits until every
#                                           node serves. Idempotent: run again, it starts only
#                                           what is not running (a killed node comes back).
#   scripts/cluster.sh down DIR             stops every process it started, by its pid.
#
# Each node gets the ring too (--ring, the same ip:port list as nginx's upstream), so it
# refuses a namespace that the ring gives another node. A node started before N changed keeps
# its old ring until it is restarted.
#
# SEMCACHE_BIN picks the binary (default: target/release/semcache, built if missing);
# SEMCACHE_NODE_ARGS adds flags to every node; SEMCACHE_MODEL_DIR and the other SEMCACHE_*
# settings reach the nodes as usual. Installs nginx if it is missing, as setup.sh does.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  echo "usage: $0 up DIR N BASE_PORT | down DIR" >&2
  exit 2
}

# Whether the process of pid file `$1` runs. A killed node whose parent (this script) has
# exited may linger as a zombie until init reaps it; that is not running.
running() {
  kill -0 "$1" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

alive() { [[ -f "$1" ]] && running "$(cat "$1")"; }

# Waits until `$2` (a log file) says the node serves, or the process of pid file `$1` dies.
wait_serving() {
  local pidfile=$1 log=$2 deadline=$((SECONDS + 120))
  until grep -q "serving" "$log" 2>/dev/null; do
    if ! alive "$pidfile"; then
      echo "cluster.sh: the node of $pidfile exited; its log:" >&2
      tail -20 "$log" >&2
      exit 1
    fi
    ((SECONDS < deadline)) || { echo "cluster.sh: $log: not serving after 120 s" >&2; exit 1; }
    sleep 0.2
  done
}

up() {
  [[ $# -eq 3 ]] || usage
  local dir=$1 n=$2 base=$3
  [[ $n =~ ^[1-9][0-9]*$ && $base =~ ^[0-9]+$ ]] || usage
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || "$root/scripts/setup.sh" nginx >/dev/null
  # Debian puts nginx in /usr/sbin, which a non-root PATH may lack.
  local nginx
  nginx=$(command -v nginx || echo /usr/sbin/nginx)
  local bin=${SEMCACHE_BIN:-}
  if [[ -z $bin ]]; then
    bin="${CARGO_TARGET_DIR:-$root/target}/release/semcache"
    [[ -x $bin ]] || (cd "$root" && cargo build --release --bin semcache)
  fi
  export SEMCACHE_MODEL_DIR="${SEMCACHE_MODEL_DIR:-$root/models/all-MiniLM-L6-v2}"

  local ring="" upstreams="" map="" started=() members=""
  for ((k = 1; k <= n; k++)); do
    members+="${members:+,}127.0.0.1:$((base + k))"
  done
  for ((k = 1; k <= n; k++)); do
    local port=$((base + k)) node="n$k"
    ring+="        server 127.0.0.1:$port max_fails=0;"$'\n'
    upstreams+="    upstream semcache_$node { server 127.0.0.1:$port max_fails=0; keepalive 16; }"$'\n'
    map+="        $node semcache_$node;"$'\n'
    if alive "$dir/$node.pid"; then
      continue
    fi
    # shellcheck disable=SC2086 # SEMCACHE_NODE_ARGS is a list of flags
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$dir/$node" --node-id "$node" \
      --require-routing-header --ring "$members" ${SEMCACHE_NODE_ARGS:-} >"$dir/$node.log" 2>&1 &
    echo $! >"$dir/$node.pid"
    started+=("$node")
  done

  sed -e "s|@RUN_DIR@|$dir|g" -e "s|@LISTEN@|127.0.0.1:$base|g" "$root/deploy/nginx/semcache.conf" |
    awk -v ring="${ring%$'\n'}" -v upstreams="${upstreams%$'\n'}" -v map="${map%$'\n'}" '
      /^@RING_SERVERS@$/ { print ring; next }
      /^@NODE_UPSTREAMS@$/ { print upstreams; next }
      /^@NODE_MAP@$/ { print map; next }
      { print }' >"$dir/nginx.conf"
  # nginx's workers drop root; they buffer large request bodies here.
  mkdir -p "$dir/nginx-body" && chmod 1777 "$dir/nginx-body"
  "$nginx" -t -q -c "$dir/nginx.conf" -p "$dir" -e "$dir/nginx.error.log"
  if alive "$dir/nginx.pid"; then
    kill -HUP "$(cat "$dir/nginx.pid")"   # reload, in case N changed
  else
    "$nginx" -c "$dir/nginx.conf" -p "$dir" -e "$dir/nginx.error.log" >>"$dir/nginx.log" 2>&1 &
    # nginx writes its own pid file; until then, the one of the process just started.
    echo $! >"$dir/nginx.pid"
  fi

  for node in "${started[@]}"; do
    wait_serving "$dir/$node.pid" "$dir/$node.log"
  done
  local deadline=$((SECONDS + 30))
  until (exec 3<>"/dev/tcp/127.0.0.1/$base") 2>/dev/null; do
    ((SECONDS < deadline)) || { echo "cluster.sh: nginx is not listening on $base" >&2; cat "$dir/nginx.error.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "cluster.sh: $n nodes behind nginx on 127.0.0.1:$base (started: ${started[*]:-none})"
}

down() {
  [[ $# -eq 1 ]] || usage
  local dir=$1 pids=()
  for pidfile in "$dir"/*.pid; do
    [[ -f $pidfile ]] || continue
    if alive "$pidfile"; then
      pids+=("$(cat "$pidfile")")
      kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    fi
  done
  local deadline=$((SECONDS + 30))
  for pid in "${pids[@]}"; do
    while running "$pid"; do
      if ((SECONDS >= deadline)); then
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.1
    done
  done
  rm -f "$dir"/*.pid
  echo "cluster.sh: stopped ${#pids[@]} processes"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) shift; down "$@" ;;
  *) usage ;;
esac
