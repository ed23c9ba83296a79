#!/usr/bin/env bash
# Stop exactly the head that cluster/local/up.sh started: the PIDs it recorded and every process
# descended from them (workers, agents), by PID. Never Ray's own stop command, which would kill every Ray
# process on the machine, other people's too.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
STATE=${RAY_HEAD_DIR:-$root/.ray-head}
if [ ! -s "$STATE/head.pids" ]; then echo "down.sh: no head recorded in $STATE"; exit 0; fi

# A process is live if it exists and is not a zombie waiting to be reaped.
live() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]; }

# Recorded roots plus all their descendants (walk the parent links in /proc).
collect() {
  local all=" $(tr '\n' ' ' < "$STATE/head.pids")" changed=1 p pp
  while [ $changed = 1 ]; do
    changed=0
    for p in /proc/[0-9]*; do
      p=${p#/proc/}
      case "$all" in *" $p "*) continue;; esac
      pp=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null) || continue
      case "$all " in *" $pp "*) all="$all$p "; changed=1;; esac
    done
  done
  for p in $all; do live "$p" && echo "$p"; done
}
pids=$(collect | tr '\n' ' ')
if [ -n "$pids" ]; then
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 1 50); do
    alive=""; for p in $pids; do live "$p" && alive="$alive $p"; done
    [ -z "$alive" ] && break; sleep 0.2
  done
  [ -n "${alive:-}" ] && kill -KILL $alive 2>/dev/null || true
fi
tmp=$(cat "$STATE/temp_dir" 2>/dev/null || true)
rm -f "$STATE/head.pids"
[ -n "$tmp" ] && case "$tmp" in /tmp/reslstm-ray-*) rm -rf "$tmp";; esac
echo "down.sh: stopped the head (${pids:-no live processes})"
