#!/usr/bin/env bash
# A local MLflow tracking server for the jobs (`--mlflow-uri http://127.0.0.1:PORT`): bound to
# 127.0.0.1, runs and the model registry in SQLite, artifacts proxied by the server (clients
# need no storage credentials: they upload to the server, which writes to a local folder or to
# S3). The server's PID is recorded in the state directory; `stop` ends exactly that process
# and its descendants (its web workers), by PID.
#
#   cluster/local/mlflow.sh start        # prints the tracking URI when the server answers
#   cluster/local/mlflow.sh url          # the tracking URI of the running server
#   cluster/local/mlflow.sh stop
#
# Environment: VENV (default .venv), MLFLOW_STATE_DIR (default .mlflow-server: PID, port, log,
# and by default the database and artifacts), MLFLOW_PORT (default: a free port),
# MLFLOW_BACKEND_STORE_URI (default sqlite:///<state dir>/mlflow.db),
# MLFLOW_ARTIFACTS_DESTINATION (default <state dir>/artifacts; or s3://bucket/prefix, then the
# server needs boto3 and AWS credentials in its environment, and MLFLOW_S3_ENDPOINT_URL for an
# S3 API other than AWS, e.g. http://127.0.0.1:9000), MLFLOW_WORKERS (web workers, default 1).
# With an s3:// destination, MLflow 3.17 clients download artifacts (and upload files of 500 MB
# and more) straight from and to S3 by presigned URLs the server signs; a client that cannot
# reach the bucket sets MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=false (and
# MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=false) to go through the server.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/cluster/local/procs.sh"  # live, descendants, stop_pids
VENV=${VENV:-$root/.venv}
STATE=${MLFLOW_STATE_DIR:-$root/.mlflow-server}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
running_pid() {  # the recorded server PID, if that process still lives
  local pid
  pid=$(cat "$STATE/server.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && live "$pid" && echo "$pid"
}
url() { echo "http://127.0.0.1:$(cat "$STATE/port")"; }

stop_server() {
  local pid pids
  if ! pid=$(running_pid); then
    rm -f "$STATE/server.pid"; echo "mlflow.sh: no server running (state: $STATE)"; return 0
  fi
  pids=$(descendants "$pid" | tr '\n' ' ')
  stop_pids $pids
  rm -f "$STATE/server.pid"
  echo "mlflow.sh: stopped the server (PIDs $pids)"
}

start_server() {
  if pid=$(running_pid); then
    echo "mlflow.sh: a server is running already (PID $pid): $(url)" >&2; return 1
  fi
  if [ ! -x "$VENV/bin/mlflow" ]; then
    echo "mlflow.sh: $VENV/bin/mlflow not found: create the virtualenv first (see README), or set VENV" >&2
    return 1
  fi
  local port backend dest
  port=${MLFLOW_PORT:-$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
  # MLflow 3 refuses relative sqlite paths under a changed working directory (Tune trials):
  # always an absolute one.
  backend=${MLFLOW_BACKEND_STORE_URI:-sqlite:///$STATE/mlflow.db}
  dest=${MLFLOW_ARTIFACTS_DESTINATION:-$STATE/artifacts}
  case "$dest" in *://*) ;; *) mkdir -p "$dest"; dest=$(cd "$dest" && pwd);; esac
  echo "$port" > "$STATE/port"
  # No --default-artifact-root: with it, clients would write to the storage themselves; without
  # it, new experiments get mlflow-artifacts:/ and their artifacts go through this server.
  nohup "$VENV/bin/mlflow" server --host 127.0.0.1 --port "$port" \
    --backend-store-uri "$backend" --serve-artifacts --artifacts-destination "$dest" \
    --workers "${MLFLOW_WORKERS:-1}" > "$STATE/server.log" 2>&1 < /dev/null &
  echo $! > "$STATE/server.pid"
  # Ready when GET /health answers OK (the first start also creates the database tables).
  if ! "$VENV/bin/python" - "$(url)/health" "$(cat "$STATE/server.pid")" <<'EOF'
import os, sys, time, urllib.request
url, pid, deadline = sys.argv[1], int(sys.argv[2]), time.time() + 180
while time.time() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("the server exited")
    time.sleep(0.5)
sys.exit("no answer from /health after 180 s")
EOF
  then
    tail -n 40 "$STATE/server.log" >&2
    echo "mlflow.sh: the server did not come up (log above, in $STATE/server.log)" >&2
    stop_server >/dev/null
    return 1
  fi
  echo "mlflow.sh: MLflow server running (PID $(cat "$STATE/server.pid")), artifacts in $dest"
  echo "mlflow.sh: tracking URI (--mlflow-uri, MLFLOW_TRACKING_URI):"
  url
}

cmd=${1:-}
case "$cmd" in
  start|stop|url) mkdir -p "$STATE"; STATE=$(cd "$STATE" && pwd) ;;
  -h|--help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac
case "$cmd" in
  start) start_server ;;
  stop) stop_server ;;
  url) if running_pid > /dev/null; then url; else echo "mlflow.sh: no server running" >&2; exit 1; fi ;;
esac
