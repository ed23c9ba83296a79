# Process helpers that down.sh and mlflow.sh source (not a command): every process is found and
# signalled by PID, never by name.

# A process is live if it exists and is not a zombie waiting to be reaped.
live() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]; }

# The PIDs given and all their descendants (parent links in /proc), live ones only.
descendants() {
  local all=" " changed=1 p pp
  for p in "$@"; do
    case "$all" in *" $p "*) ;; *) all="$all$p ";; esac
  done
  while [ $changed = 1 ]; do
    changed=0
    for p in /proc/[0-9]*; do
      p=${p#/proc/}
      case "$all" in *" $p "*) continue;; esac
      pp=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null) || continue
      case "$all" in *" $pp "*) all="$all$p "; changed=1;; esac
    done
  done
  for p in $all; do live "$p" && echo "$p"; done
  return 0
}

# TERM the PIDs given, up to 10 s for them to exit, then KILL the ones left.
stop_pids() {
  local alive="" p
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq 1 50); do
    alive=""; for p in "$@"; do live "$p" && alive="$alive $p"; done
    [ -z "$alive" ] && break; sleep 0.2
  done
  [ -n "$alive" ] && kill -KILL $alive 2>/dev/null || true
}
