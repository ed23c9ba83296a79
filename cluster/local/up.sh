#!/usr/bin/env bash
# Start a local Ray head for `ray job submit`: token authentication on, the dashboard (and so
# the job API) bound to 127.0.0.1, started from the project's virtualenv so a job's `python`
# is that interpreter. Everything it starts is recorded by PID in the state directory, which
# cluster/local/down.sh uses to stop exactly this head (never Ray's stop-everything command).
#
#   cluster/local/up.sh                     # then, in the same shell:
#   eval "$(cluster/local/up.sh --env)"     # prints the exports a client needs
#
# Environment: VENV (default .venv), RAY_HEAD_DIR (state dir, default .ray-head),
# RAY_PORT (6379), RAY_DASHBOARD_PORT (8265), RAY_AGENT_PORT (the dashboard agent's HTTP port,
# which runs the job API: 52365), RAY_CLIENT_PORT (10001), RAY_NUM_CPUS / RAY_NUM_GPUS (detected),
# RAY_AUTH_TOKEN_PATH (default ~/.ray/auth_token; created if missing), RAY_num_workers_soft_limit
# (idle workers the head keeps: 2 per CPU + 2).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${VENV:-$root/.venv}
STATE=${RAY_HEAD_DIR:-$root/.ray-head}
PORT=${RAY_PORT:-6379}
DASH=${RAY_DASHBOARD_PORT:-8265}
AGENT=${RAY_AGENT_PORT:-52365}
CLIENT=${RAY_CLIENT_PORT:-10001}
TOKEN=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)

env_lines() {
  echo "export RAY_AUTH_MODE=token"
  echo "export RAY_AUTH_TOKEN_PATH=$TOKEN"
  echo "export RAY_ADDRESS=http://127.0.0.1:$DASH"
}
if [ "${1:-}" = "--env" ]; then env_lines; exit 0; fi

if [ ! -x "$VENV/bin/ray" ]; then
  echo "up.sh: $VENV/bin/ray not found: create the virtualenv first (see README), or set VENV" >&2
  exit 1
fi
if [ -s "$STATE/head.pids" ]; then
  echo "up.sh: a head recorded in $STATE/head.pids may still run: run cluster/local/down.sh first" >&2
  exit 1
fi
if [ ! -s "$TOKEN" ]; then
  mkdir -p "$(dirname "$TOKEN")"
  (umask 077; "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$TOKEN")
  echo "up.sh: generated an authentication token in $TOKEN"
fi
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$TOKEN

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
export RAY_num_workers_soft_limit=${RAY_num_workers_soft_limit:-$((2 * ncpu + 2))}
PATH="$VENV/bin:$PATH" "$VENV/bin/ray" start "${args[@]}" > "$STATE/start.log" 2>&1 || {
  cat "$STATE/start.log" >&2; echo "up.sh: ray start failed (log above)" >&2; exit 1; }

# The head's own processes are the ones whose command line names its temp dir.
: > "$STATE/head.pids"
for p in /proc/[0-9]*; do
  if tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -qF "$tmp"; then echo "${p#/proc/}" >> "$STATE/head.pids"; fi
done
# `ray start` returns before the head's job agent is up, and a submission then fails with "No
# available agent". Wait until the job API runs a no-op job.
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
echo "up.sh: for clients in this shell: eval \"\$($0 --env)\""
env_lines
