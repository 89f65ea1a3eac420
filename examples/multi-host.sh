#!/usr/bin/env bash
# The multi-host scenario on one machine: the balancer, two backends and their
# agents are separate processes, as they would be on separate hosts.
#   harmonyd (balancer) <- harmonyd agent (weight 1000) <- backend 1
#                       <- harmonyd agent (weight 500)  <- backend 2
# Ports can be moved with BASE_PORT (default 23400: uses BASE_PORT..BASE_PORT+3).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
base=${BASE_PORT:-23400}
listen=$base admin=$((base + 1)) port1=$((base + 2)) port2=$((base + 3))
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# One HTTP request over bash's /dev/tcp; prints the body.
get() {
  exec 3<>"/dev/tcp/127.0.0.1/$listen"
  printf 'GET / HTTP/1.0\r\n\r\n' >&3
  sed -e '1,/^\r$/d' <&3
  exec 3<&-
}
admin() {
  exec 4<>"/dev/tcp/127.0.0.1/$admin"
  printf '%s\nquit\n' "$1" >&4
  cat <&4
  exec 4<&-
}

./harmonyd --listen 127.0.0.1:$listen --admin 127.0.0.1:$admin --no-persistent --log-level warn \
  --unavailable $'HTTP/1.0 503 Service Unavailable\r\n\r\nno backend\n' & pids+=($!)
"$build/examples/backend" $port1 "backend 1" & pids+=($!)
"$build/examples/backend" $port2 "backend 2" & pids+=($!)
sleep 0.3
./harmonyd agent --balancer 127.0.0.1:$admin --port $port1 --weight 1000 --log-level warn & agent1=$!
pids+=($agent1)
./harmonyd agent --balancer 127.0.0.1:$admin --port $port2 --weight 500 --log-level warn & pids+=($!)
for _ in $(seq 50); do
  [ "$(admin list | grep -c 'state=up')" = 2 ] && break
  sleep 0.1
done
echo "== backends as the balancer sees them"
admin list | grep '^backend'
echo "== 9 requests through the balancer (expect 6 : 3)"
split=$(for _ in $(seq 9); do get; done | sort | uniq -c)
echo "$split"
echo "== agent 1 stops (it deregisters first)"
kill "$agent1"
wait "$agent1" 2>/dev/null || true
after=$(for _ in $(seq 3); do get; done | sort | uniq -c)
echo "$after"
# The demo doubles as a smoke test: say so when the traffic did not go as expected.
[ "$(echo $split)" = "6 backend 1 3 backend 2" ] && [ "$(echo $after)" = "3 backend 2" ] \
  || { echo "unexpected distribution" >&2; exit 1; }
