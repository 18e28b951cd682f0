#!/usr/bin/env bash
# Docker API latencies through a follower manager, with the real docker CLI:
#   - `docker run -d` from the request until it returns (start returns once the container is
#     RUNNING on a node), over RUNS runs (default 20);
#   - `docker ps -a` with 1,000 containers in the cluster (created through the API as cluster
#     objects; they are not started, so the engine is not loaded with 1,000 processes).
# Starts its own `shoal dev --managers 3 --agents 2` in a temp dir and stops it at the end.
# Usage: bench/docker-api.sh [RUNS] [CONTAINERS]; needs the shoal binary built
# (${CARGO_TARGET_DIR:-target}/debug/shoal) and the shoal/whoami image (deploy/images/build whoami).
set -euo pipefail
runs="${1:-20}"
containers="${2:-1000}"
shoal="${SHOAL_BIN:-${CARGO_TARGET_DIR:-target}/debug/shoal}"
dir="$(mktemp -d)"
"$shoal" dev --managers 3 --agents 2 --dir "$dir" >"$dir/dev.out" 2>&1 &
dev=$!
cleanup() { kill "$dev" 2>/dev/null || true; wait "$dev" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for _ in $(seq 1 600); do [ -s "$dir/cluster.json" ] && break; sleep 0.2; done
host="tcp://$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["managers"][1]["docker_api"])' "$dir/cluster.json")"
ms() { date +%s%N; }
percentiles() { sort -n | awk '{a[NR]=$1} END {p50=a[int((NR+1)*0.5)]; p99=a[int(NR*0.99+0.999)]; printf "n=%d p50=%.1f ms p99=%.1f ms max=%.1f ms\n", NR, p50, p99, a[NR]}'; }
echo "docker run -d (request to RUNNING), $runs runs via $host:"
for i in $(seq 1 "$runs"); do
    t0=$(ms); docker -H "$host" run -d --name "bench$i" shoal/whoami:latest >/dev/null; t1=$(ms)
    echo "scale=1; ($t1 - $t0) / 1000000" | bc
done | percentiles
for i in $(seq 1 "$runs"); do docker -H "$host" rm -f "bench$i" >/dev/null; done
echo "creating $containers containers..."
for i in $(seq 1 "$containers"); do echo "create --name c$i shoal/whoami:latest"; done \
    | xargs -P 8 -L 1 docker -H "$host" >/dev/null
echo "docker ps -a with $(docker -H "$host" ps -aq | wc -l) containers, $runs runs:"
for _ in $(seq 1 "$runs"); do
    t0=$(ms); docker -H "$host" ps -a >/dev/null; t1=$(ms)
    echo "scale=1; ($t1 - $t0) / 1000000" | bc
done | percentiles
echo "docker info, $runs runs:"
for _ in $(seq 1 "$runs"); do
    t0=$(ms); docker -H "$host" info >/dev/null; t1=$(ms)
    echo "scale=1; ($t1 - $t0) / 1000000" | bc
done | percentiles
