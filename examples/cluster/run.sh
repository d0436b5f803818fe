#!/usr/bin/env bash
# A fleet on loopback: a plugin registry, HAProxy, three wasmux servers
# that load their plugins from the registry and keep their state (plugins'
# key-value state, canaries) in one Redis, and a Prometheus scraping them.
#
#   examples/cluster/run.sh [BASE_PORT]        (BASE_PORT defaults to 5000)
#
#   BASE_PORT      the registry (Debian's docker-registry), 127.0.0.1:BASE_PORT/wasmux
#   BASE_PORT+1    HAProxy: point clients here (wasmux send --addr 127.0.0.1:BASE_PORT+1 …)
#   BASE_PORT+2…4  the three wasmux servers
#   BASE_PORT+5…7  their HAProxy agents (ready / drain)
#   BASE_PORT+8…10 their admin endpoints (/metrics, /plugins, /healthz, /experiments)
#   BASE_PORT+11   Redis (Debian's redis-server, no persistence): the servers' --kv
#   BASE_PORT+12   Prometheus (Debian's), scraping the three admin endpoints every 2 s
#
# It installs haproxy, docker-registry, redis-server and prometheus with
# apt-get when missing, builds the plugins and wasmux (cargo xtask plugins,
# cargo build --release -p wasmux-cli) unless WASMUX names a wasmux binary
# to use instead, pushes the plugins of
# target/plugins to the registry (search.wasm as tag `search`,
# search@fuzzy.wasm as `search__fuzzy`), starts everything, prints one line
# when every server is UP in HAProxy, and stops everything on Ctrl-C or
# SIGTERM. Logs and data live in a temporary directory, removed at the end
# (set WASMUX_FLEET_KEEP=1 to keep it).
#
# Try, in another terminal:
#   target/release/wasmux send --addr 127.0.0.1:5001 search morpheus
#   target/release/wasmux push target/plugins/search@fuzzy.wasm 127.0.0.1:5000/wasmux:search
#   (every server serves the fuzzy search within a poll interval)
#   kill -TERM <a server's pid>   (it drains, HAProxy sends it nothing new;
#                                  run.sh starts it again)
set -euo pipefail

base=${1:-5000}
# Ports of the kernel's ephemeral range (32768 and up on Linux) may be
# taken at any moment by an outgoing connection; stay below it.
if ! [[ $base =~ ^[0-9]+$ ]] || ((base < 1024 || base > 32755)); then
    echo "usage: $0 [BASE_PORT]   (1024…32755; uses BASE_PORT to BASE_PORT+12)" >&2
    exit 2
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$root/examples/cluster
host=127.0.0.1
registry=$host:$base
repository=$registry/wasmux
lb=$host:$((base + 1))
poll_interval=${WASMUX_FLEET_POLL:-2s}

"$here/install-deps.sh"
for program in haproxy docker-registry redis-server prometheus python3; do
    command -v "$program" >/dev/null || { echo "run.sh: $program is missing" >&2; exit 1; }
done

# Ports already taken would fail late and confusingly: check them first.
for port in $(seq "$base" $((base + 12))); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
        echo "run.sh: port $port is in use; pick another BASE_PORT" >&2
        exit 1
    fi
done

wasmux=${WASMUX:-$root/target/release/wasmux}
if [ -z "${WASMUX:-}" ]; then
    (cd "$root" && cargo xtask plugins && cargo build --release -q -p wasmux-cli) >&2
fi
plugins=$root/target/plugins
ls "$plugins"/*.wasm >/dev/null 2>&1 || { echo "run.sh: no plugins in $plugins (cargo xtask plugins)" >&2; exit 1; }

run=$(mktemp -d "${TMPDIR:-/tmp}/wasmux-fleet.XXXXXX")
pids=()
names=()

# shellcheck disable=SC2317 # called by the EXIT trap
stop_all() {
    trap - EXIT INT TERM
    # In the reverse order of starting: HAProxy (no new client), the
    # servers (SIGTERM: they drain), the registry. All are asked at once;
    # each acts on its own.
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null || true
    done
    # Whatever has not exited within 10 s is killed.
    for ((i = 0; i < 100; i++)); do
        local alive=0 pid
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "${WASMUX_FLEET_KEEP:-}" ]; then
        echo "run.sh: logs and data kept in $run" >&2
    else
        rm -rf "$run"
    fi
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start SLOT NAME COMMAND…: runs a program in the background, its output
# appended to $run/NAME.log, its pid in pids[SLOT] (0 the registry, 1 to 3
# the servers, 4 HAProxy, 5 Redis, 6 Prometheus) for stop_all.
start() {
    local slot=$1 name=$2
    shift 2
    "$@" >>"$run/$name.log" 2>&1 &
    pids[slot]=$!
    names[slot]=$name
}

# wait_for_port SLOT PORT: until something listens there (15 s at most);
# fails early if the program already exited.
wait_for_port() {
    local name=${names[$1]} pid=${pids[$1]} port=$2 i
    for ((i = 0; i < 150; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "run.sh: $name exited; its log ($run):" >&2
            tail -n 20 "$run/$name.log" >&2
            exit 1
        fi
        (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "run.sh: $name is not listening on port $port after 15 s; its log:" >&2
    tail -n 20 "$run/$name.log" >&2
    exit 1
}

# The registry: Debian's docker-registry, unprivileged, in the foreground.
mkdir -p "$run/registry"
start 0 registry env \
    REGISTRY_HTTP_ADDR="$registry" \
    REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$run/registry" \
    docker-registry serve "$here/registry.yml"
wait_for_port 0 "$base"

# The plugins, each under the tag its file name says.
for file in "$plugins"/*.wasm; do
    "$wasmux" push "$file" "$repository" >"$run/push.log" 2>&1 || {
        echo "run.sh: cannot push $file:" >&2
        cat "$run/push.log" >&2
        exit 1
    }
done

# Redis, the servers' shared store: no persistence, its files in $run.
kv=redis://$host:$((base + 11))
mkdir -p "$run/redis"
start 5 redis redis-server --port $((base + 11)) --bind "$host" --save "" --appendonly no --dir "$run/redis"
wait_for_port 5 $((base + 11))

# Server N (1 to 3), with its agent port and admin endpoint, keeping its own
# cache of what it pulled and its state in the shared Redis.
start_server() {
    local i=$1
    start "$i" "wasmux$i" "$wasmux" serve \
        --listen "$host:$((base + 1 + i))" \
        --plugins "oci://$repository" \
        --poll-interval "$poll_interval" \
        --agent "$host:$((base + 4 + i))" \
        --admin "$host:$((base + 7 + i))" \
        --kv "$kv" \
        --cache-dir "$run/cache$i"
}
for i in 1 2 3; do
    start_server "$i"
    wait_for_port "$i" $((base + 1 + i))
done

# HAProxy, configured by environment variables (see haproxy.cfg).
start 4 haproxy env \
    WASMUX_LB="$lb" \
    WASMUX_HAPROXY_SOCKET="$run/haproxy.sock" \
    WASMUX_SERVER1="$host:$((base + 2))" WASMUX_AGENT1=$((base + 5)) \
    WASMUX_SERVER2="$host:$((base + 3))" WASMUX_AGENT2=$((base + 6)) \
    WASMUX_SERVER3="$host:$((base + 4))" WASMUX_AGENT3=$((base + 7)) \
    haproxy -db -f "$here/haproxy.cfg"
wait_for_port 4 $((base + 1))

# Prometheus, scraping the three admin endpoints' /metrics.
prometheus=http://$host:$((base + 12))
cat >"$run/prometheus.yml" <<YAML
global:
  scrape_interval: 2s
scrape_configs:
  - job_name: wasmux
    static_configs:
      - targets: ["$host:$((base + 8))", "$host:$((base + 9))", "$host:$((base + 10))"]
YAML
start 6 prometheus prometheus \
    --config.file="$run/prometheus.yml" \
    --storage.tsdb.path="$run/prometheus" \
    --web.listen-address="$host:$((base + 12))"
wait_for_port 6 $((base + 12))

# Waits until CHECK succeeds, up to SECONDS; otherwise says WHO does not
# see all three servers up, keeps the logs and stops.
wait_until_up() {
    local check=$1 seconds=$2 who=$3
    for ((i = 0; ; i++)); do
        "$check" 2>/dev/null && return 0
        if ((i == seconds * 10)); then
            echo "run.sh: $who does not see all three servers up after $seconds s; logs in $run" >&2
            WASMUX_FLEET_KEEP=1
            exit 1
        fi
        sleep 0.1
    done
}

# Ready when HAProxy's health checks (a real search request) see all three UP.
servers_up() {
    python3 - "$run/haproxy.sock" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
s.connect(sys.argv[1])
s.sendall(b"show stat\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
lines = data.decode().splitlines()
header = lines[0].lstrip("# ").split(",")
name, status = header.index("svname"), header.index("status")
up = [l for l in lines[1:] if l.startswith("wasmux,wasmux") and l.split(",")[status] == "UP"]
sys.exit(0 if len(up) == 3 else 1)
EOF
}
wait_until_up servers_up 20 HAProxy

# And when Prometheus has scraped all three (its first scrapes are spread
# over the 2 s interval, after it has started).
prometheus_sees_three() {
    python3 - "$prometheus" <<'EOF'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/api/v1/query?query=count(up%3D%3D1)", timeout=2) as answer:
    result = json.load(answer)["data"]["result"]
sys.exit(0 if result and result[0]["value"][1] == "3" else 1)
EOF
}
wait_until_up prometheus_sees_three 30 Prometheus

echo "fleet ready: clients to $lb (haproxy) -> wasmux $host:$((base + 2)),$((base + 3)),$((base + 4)) (pids ${pids[1]} ${pids[2]} ${pids[3]}); plugins from oci://$repository; metrics http://$host:$((base + 8))-$((base + 10))/metrics; state in $kv; prometheus $prometheus; logs $run; Ctrl-C stops"

# Run until Ctrl-C or SIGTERM. A server that exits (`kill -TERM PID`: it
# drains first) is started again, as a service manager would, and loads
# the registry's current plugins; if the registry, HAProxy, Redis or
# Prometheus exits, the fleet stops.
set +e
while true; do
    wait -n "${pids[@]}"
    status=$?
    for i in 0 1 2 3 4 5 6; do
        kill -0 "${pids[i]}" 2>/dev/null && continue
        wait "${pids[i]}" 2>/dev/null
        if ((i == 0 || i >= 4)); then
            echo "run.sh: ${names[i]} exited ($status); stopping the fleet. Its log:" >&2
            tail -n 20 "$run/${names[i]}.log" >&2
            exit 1
        fi
        start_server "$i"
        echo "run.sh: wasmux$i (port $((base + 1 + i))) exited ($status); started again, pid ${pids[i]}" >&2
    done
done
