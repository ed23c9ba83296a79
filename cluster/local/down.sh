#!/usr/bin/env bash
# Stop exactly the cluster that cluster/local/up.sh started (the head and any worker nodes of
# --workers): the PIDs it recorded, every process descended from them (workers, agents), and
# any process still naming one of its private temp dirs or carrying RESLSTM_RAY_NODE=<one of
# them> in its environment (as up.sh started them), all by PID. Never Ray's own stop command,
# which would kill every Ray process on the machine, other people's too.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/cluster/local/procs.sh"  # live, descendants, stop_pids
STATE=${RAY_HEAD_DIR:-$root/.ray-head}
if [ ! -s "$STATE/head.pids" ] && [ ! -s "$STATE/workers.pids" ]; then
  echo "down.sh: no cluster recorded in $STATE"; exit 0
fi

# The cluster's temp dirs (mktemp names under /tmp, unique to it).
tmps=$(cat "$STATE/temp_dir" "$STATE/worker_temp_dirs" 2>/dev/null || true)

# Processes whose command line names one of those temp dirs, or whose environment marks them
# as started for one of them.
naming_tmps() {
  local p d cmd envs
  [ -n "$tmps" ] || return 0
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' 2>/dev/null < "$p/cmdline") || continue
    envs=$(tr '\0' '\n' 2>/dev/null < "$p/environ" | grep '^RESLSTM_RAY_NODE=') || envs=""
    for d in $tmps; do
      case "$cmd" in *"$d"*) echo "${p#/proc/}"; break;; esac
      if [ "$envs" = "RESLSTM_RAY_NODE=$d" ]; then echo "${p#/proc/}"; break; fi
    done
  done
  return 0
}

# Recorded roots plus all their descendants, live ones.
collect() {
  descendants $(cat "$STATE/head.pids" "$STATE/workers.pids" 2>/dev/null) $(naming_tmps)
}

# In stages, so that each process sees the others leave cleanly and exits within a second:
# raylets (each also stops its own workers), then the head's other processes (the autoscaler
# monitor would wait for a GCS that is already gone), then the GCS. Signalled all at once,
# GCS, raylets and monitor wait for each other until the KILL 10 s later.
pids=$(collect | tr '\n' ' ')
by_name() {  # the live PIDs among $2.. whose process name is (or, with !, is not) $1
  local want=$1 p name; shift
  for p in "$@"; do
    name=$(cat 2>/dev/null "/proc/$p/comm") || continue
    case "$want" in
      !*) [ "$name" != "${want#!}" ] && echo "$p" ;;
      *) [ "$name" = "$want" ] && echo "$p" ;;
    esac
  done
  return 0
}
stage=$(by_name raylet $pids | tr '\n' ' ')
[ -n "$stage" ] && stop_pids $stage
stage=$(by_name '!gcs_server' $(collect) | tr '\n' ' ')
[ -n "$stage" ] && stop_pids $stage
stage=$(collect | tr '\n' ' ')  # the GCS, and anything started meanwhile
[ -n "$stage" ] && stop_pids $stage
rm -f "$STATE/head.pids" "$STATE/workers.pids" "$STATE/worker_temp_dirs"
for d in $tmps; do
  case "$d" in /tmp/reslstm-ray-*) rm -rf "$d";; esac
done
echo "down.sh: stopped the cluster (${pids:-no live processes})"
