#!/usr/bin/env bash
# Start a local Ray head for `ray job submit`: token authentication on, the dashboard (and so
# the job API) bound to 127.0.0.1, started from the project's virtualenv so a job's `python`
# is that interpreter. `--workers N` also starts N worker nodes on this machine, each its own
# `ray start --address 127.0.0.1:PORT` (own raylet, object store and temp dir), a small
# multi-node cluster for trying out scheduling across nodes. Everything it starts is recorded
# by PID in the state directory, which cluster/local/down.sh uses to stop exactly this cluster
# (never Ray's stop-everything command); each node's processes also carry RESLSTM_RAY_NODE=<its
# temp dir> in their environment, so that down.sh finds any the PID files missed.
#
#   cluster/local/up.sh                     # then, in the same shell:
#   eval "$(cluster/local/up.sh --env)"     # prints the exports a client needs
#   cluster/local/up.sh --workers 2         # head + 2 worker nodes
#
# Environment: VENV (default .venv), RAY_HEAD_DIR (state dir, default .ray-head),
# RAY_PORT (6379), RAY_DASHBOARD_PORT (8265), RAY_AGENT_PORT (the dashboard agent's HTTP port,
# which runs the job API: 52365), RAY_CLIENT_PORT (10001), RAY_NUM_CPUS / RAY_NUM_GPUS (detected),
# RAY_AUTH_TOKEN_PATH (default ~/.ray/auth_token; created if missing), RAY_num_workers_soft_limit
# (idle workers a node keeps: 2 per CPU + 2 of that node).
# Worker nodes: RAY_WORKER_CPUS (1 each), RAY_WORKER_GPUS (0 each: nodes on one machine would
# otherwise each claim every GPU), RAY_WORKER_OBJECT_STORE_MEMORY (bytes; Ray's default if unset).
# Their ports are picked free on 127.0.0.1 (Ray's defaults, e.g. the agent's 52365, would clash).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${VENV:-$root/.venv}
STATE=${RAY_HEAD_DIR:-$root/.ray-head}
PORT=${RAY_PORT:-6379}
DASH=${RAY_DASHBOARD_PORT:-8265}
AGENT=${RAY_AGENT_PORT:-52365}
CLIENT=${RAY_CLIENT_PORT:-10001}
TOKEN=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
WORKERS=0
WORKER_CPUS=${RAY_WORKER_CPUS:-1}
WORKER_GPUS=${RAY_WORKER_GPUS:-0}
SOFT_LIMIT=${RAY_num_workers_soft_limit:-}   # set by the user: applies to every node

env_lines() {
  echo "export RAY_AUTH_MODE=token"
  echo "export RAY_AUTH_TOKEN_PATH=$TOKEN"
  echo "export RAY_ADDRESS=http://127.0.0.1:$DASH"
}
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

print_env=0
while [ $# -gt 0 ]; do
  case "$1" in
    --env) print_env=1 ;;
    --workers) [ $# -ge 2 ] || { echo "up.sh: --workers needs a number" >&2; exit 2; }
               WORKERS=$2; shift ;;
    --workers=*) WORKERS=${1#--workers=} ;;
    -h|--help) usage; exit 0 ;;
    *) echo "up.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ $print_env = 1 ]; then env_lines; exit 0; fi
case "$WORKERS" in ''|*[!0-9]*) echo "up.sh: --workers takes a number, not '$WORKERS'" >&2; exit 2;; esac

mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
if [ ! -x "$VENV/bin/ray" ]; then
  echo "up.sh: $VENV/bin/ray not found: create the virtualenv first (see README), or set VENV" >&2
  exit 1
fi
if [ -s "$STATE/head.pids" ] || [ -s "$STATE/workers.pids" ]; then
  echo "up.sh: a cluster recorded in $STATE may still run: run cluster/local/down.sh first" >&2
  exit 1
fi
if [ ! -s "$TOKEN" ]; then
  mkdir -p "$(dirname "$TOKEN")"
  (umask 077; "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$TOKEN")
  echo "up.sh: generated an authentication token in $TOKEN"
fi
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$TOKEN

# Append to $2 the PIDs of node $1's own processes: those whose command line names its temp dir
# $1 (raylet, agents, GCS, dashboard), or that carry RESLSTM_RAY_NODE=$1 in their environment
# (set for its `ray start`; the Ray client server names neither its temp dir nor a parent).
record_pids() {
  local p
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' 2>/dev/null < "$p/cmdline" | grep -qF "$1" ||
       tr '\0' '\n' 2>/dev/null < "$p/environ" | grep -qxF "RESLSTM_RAY_NODE=$1"; then
      echo "${p#/proc/}" >> "$2"
    fi
  done
}
free_port() {
  "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Ray's socket paths must stay short (Unix sockets: ~107 bytes): keep its temp dir under /tmp,
# unique to this state dir, and remember it.
tmp=$(mktemp -d /tmp/reslstm-ray-XXXXXX)
echo "$tmp" > "$STATE/temp_dir"
args=(--head --port="$PORT" --dashboard-host=127.0.0.1 --dashboard-port="$DASH"
      --dashboard-agent-listen-port="$AGENT" --ray-client-server-port="$CLIENT"
      --temp-dir="$tmp" --disable-usage-stats)
[ -n "${RAY_NUM_CPUS:-}" ] && args+=(--num-cpus="$RAY_NUM_CPUS")
[ -n "${RAY_NUM_GPUS:-}" ] && args+=(--num-gpus="$RAY_NUM_GPUS")
# Idle workers kept per node (Ray's default: one per CPU; see
# reslstm.distributed.runtime.idle_workers_to_keep): two per CPU, plus two.
ncpu=${RAY_NUM_CPUS:-$(nproc)}
RESLSTM_RAY_NODE=$tmp RAY_num_workers_soft_limit=${SOFT_LIMIT:-$((2 * ncpu + 2))} PATH="$VENV/bin:$PATH" \
  "$VENV/bin/ray" start "${args[@]}" > "$STATE/start.log" 2>&1 || {
  cat "$STATE/start.log" >&2; echo "up.sh: ray start failed (log above)" >&2; exit 1; }

# The head's own processes: those naming its temp dir or carrying its marker.
: > "$STATE/head.pids"
record_pids "$tmp" "$STATE/head.pids"

# Worker nodes: each its own temp dir (its sockets, logs and object store files) and its own
# ports; recorded before it starts, so down.sh finds it even if up.sh fails halfway.
: > "$STATE/worker_temp_dirs"
for i in $(seq 1 "$WORKERS"); do
  wtmp=$(mktemp -d /tmp/reslstm-ray-XXXXXX)
  echo "$wtmp" >> "$STATE/worker_temp_dirs"
  wargs=(--address="127.0.0.1:$PORT" --num-cpus="$WORKER_CPUS" --num-gpus="$WORKER_GPUS"
         --temp-dir="$wtmp" --disable-usage-stats
         --node-manager-port="$(free_port)" --object-manager-port="$(free_port)"
         --dashboard-agent-listen-port="$(free_port)" --dashboard-agent-grpc-port="$(free_port)"
         --metrics-export-port="$(free_port)" --runtime-env-agent-port="$(free_port)"
         --min-worker-port=0 --max-worker-port=0)  # 0: each worker process takes a free port
  [ -n "${RAY_WORKER_OBJECT_STORE_MEMORY:-}" ] && wargs+=(--object-store-memory="$RAY_WORKER_OBJECT_STORE_MEMORY")
  status=0
  RESLSTM_RAY_NODE=$wtmp RAY_num_workers_soft_limit=${SOFT_LIMIT:-$((2 * WORKER_CPUS + 2))} \
    PATH="$VENV/bin:$PATH" "$VENV/bin/ray" start "${wargs[@]}" > "$STATE/worker-$i.log" 2>&1 || status=$?
  record_pids "$wtmp" "$STATE/workers.pids"
  if [ $status != 0 ]; then
    cat "$STATE/worker-$i.log" >&2
    echo "up.sh: worker node $i failed to start (log above); run cluster/local/down.sh" >&2
    exit 1
  fi
done

# `ray start` returns before the worker nodes have registered and before the head's job agent
# is up (a submission then fails with "No available agent"). Wait until the cluster shows the
# head plus every worker alive, then until the job API runs a no-op job.
if [ "$WORKERS" -gt 0 ]; then
  if ! "$VENV/bin/python" - "127.0.0.1:$PORT" $((WORKERS + 1)) > "$STATE/nodes.log" 2>&1 <<'EOF'
import sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
want, deadline = int(sys.argv[2]), time.time() + 120
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= want:
        break
    if time.time() > deadline:
        sys.exit(f"only {len(alive)} of {want} nodes alive after 120 s")
    time.sleep(1)
print(f"{len(alive)} nodes alive")
EOF
  then
    cat "$STATE/nodes.log" >&2
    echo "up.sh: not every node joined the cluster (log above); run cluster/local/down.sh" >&2
    exit 1
  fi
fi
ok=0
for _ in $(seq 1 60); do
  if "$VENV/bin/ray" job submit --address "http://127.0.0.1:$DASH" \
       --submission-id "ready-check-$(date +%s%N)" -- python -c pass > "$STATE/ready.log" 2>&1; then
    ok=1; break
  fi
  sleep 2
done
if [ $ok != 1 ]; then
  cat "$STATE/ready.log" >&2
  echo "up.sh: the head started but its job API never accepted a job (log above); run down.sh" >&2
  exit 1
fi
echo "up.sh: Ray head running (PIDs $(tr '\n' ' ' < "$STATE/head.pids")), dashboard http://127.0.0.1:$DASH"
if [ "$WORKERS" -gt 0 ]; then
  echo "up.sh: $WORKERS worker node(s) running (PIDs $(tr '\n' ' ' < "$STATE/workers.pids"))"
fi
echo "up.sh: for clients in this shell: eval \"\$($0 --env)\""
env_lines
