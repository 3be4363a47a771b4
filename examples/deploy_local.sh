#!/usr/bin/env bash
# A real deployment on this machine: a fedblend server and one site agent per heart-disease
# hospital (Cleveland, Hungary, Switzerland, VA Long Beach), each a separate process talking
# mutual-TLS HTTPS over 127.0.0.1. Runs examples/heart_deploy.toml to the end and prints the
# final model's accuracy at each hospital. Given a job with a [tune] table, the server runs the
# search on the hospitals instead (trials one after another) and the script prints its trials.
#
#   bash examples/deploy_local.sh                                   # from the repository root, after the README set-up
#   bash examples/deploy_local.sh examples/heart_deploy_tune.toml   # a hyperparameter search on the hospitals
#
# Environment: FEDBLEND_DATA_DIR (default ../shared/data), PYTHON (default .venv/bin/python),
# WORK (default: a new temporary directory, kept for inspection).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export FEDBLEND_DATA_DIR=${FEDBLEND_DATA_DIR:-$(cd .. && pwd)/shared/data}
export PYTHONPATH="$(pwd)/src${PYTHONPATH:+:$PYTHONPATH}"
# five processes share this machine's cores: one torch thread each (idle OpenMP threads spin)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/fedblend-deploy.XXXXXX")}
FB() { "$PYTHON" -m fedblend "$@"; }
JOB=${1:-examples/heart_deploy.toml}
[ -f "$JOB" ] || { echo "error: no job file $JOB" >&2; exit 2; }
HOSPITALS="cleveland hungary switzerland va"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

[ -d "$FEDBLEND_DATA_DIR/heart_disease" ] || { echo "error: no heart_disease data under FEDBLEND_DATA_DIR=$FEDBLEND_DATA_DIR" >&2; exit 2; }
PORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "== working in $WORK (server on https://127.0.0.1:$PORT)"

# 1. the federation's certificate authority, and one bundle per hospital
FB ca init --dir "$WORK/ca" --server-url "https://127.0.0.1:$PORT" > /dev/null
for h in $HOSPITALS; do FB ca add-site "$h" --dir "$WORK/ca" > /dev/null; done

# 2. the server (waits for the four hospitals, runs the job, then tells them it is done)
FB server --job "$JOB" --state "$WORK/state" --ca "$WORK/ca" --port "$PORT" \
   --ready-file "$WORK/ready.json" > "$WORK/server.log" 2>&1 &
SERVER=$!; PIDS+=("$SERVER")
for _ in $(seq 600); do [ -f "$WORK/ready.json" ] && break; kill -0 "$SERVER" 2>/dev/null || break; sleep 0.1; done
[ -f "$WORK/ready.json" ] || { echo "error: the server did not start; see $WORK/server.log" >&2; cat "$WORK/server.log" >&2; exit 1; }

# 3. one site agent per hospital, each with its own bundle, loading only its own split
SITES=()
for h in $HOSPITALS; do
  FB site --bundle "$WORK/ca/sites/$h.bundle" --data "$FEDBLEND_DATA_DIR" > "$WORK/site-$h.log" 2>&1 &
  SITES+=("$!"); PIDS+=("$!")
done
echo "== server and ${#SITES[@]} hospitals running; training..."

status=0
for i in "${!SITES[@]}"; do wait "${SITES[$i]}" || { status=$?; echo "a site exited with $status; see $WORK/site-*.log" >&2; }; done
wait "$SERVER" || { status=$?; echo "the server exited with $status; see $WORK/server.log" >&2; }
[ "$status" -eq 0 ] || exit "$status"

# 4. a search: its trials and best configuration; a federation: the final model's accuracy at
#    each hospital, from the server's run store
if [ -f "$WORK/state/best_job.toml" ]; then
  FB show "$WORK/state"
  echo "== the best configuration, ready to run: $WORK/state/best_job.toml"
  echo "== logs and the run store are in $WORK"
  exit 0
fi
"$PYTHON" - "$WORK/state" <<'EOF'
import sys
from fedblend.store import SqlRunStore

st = SqlRunStore(sys.argv[1], create=False)
rounds = st.rounds()
last = rounds[-1]
print(f"\nfinal model after round {last['round']} ({len(rounds)} rounds, sites: {', '.join(last['participants'])})")
print(f"{'hospital':<14}{'test examples':>14}{'accuracy':>10}")
for m in st.site_metrics("eval:test"):
    if m["round"] == last["round"]:
        print(f"{m['site_id']:<14}{m['num_examples']:>14}{m['metrics']['accuracy']:>10.4f}")
gm = last["global_metrics"]
print(f"{'pooled':<14}{'':>14}{gm['test_acc']:>10.4f}")
st.close()
EOF
echo "== logs and the run store are in $WORK"
