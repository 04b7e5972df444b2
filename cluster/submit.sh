#!/usr/bin/env bash
# Submit a federated run or a sweep to a Ray cluster as a Ray job, wait for it,
# and exit with the job's status (0 = SUCCEEDED).
#
#   cluster/submit.sh run  [--set KEY=VALUE ...]          # rayfed-bpt run
#   cluster/submit.sh tune --space tune_spaces/smoke.yaml [--set ...]
#
# Environment: RAY_ADDRESS (the dashboard, default http://127.0.0.1:8265),
#   RUNTIME_ENV (default cluster/runtime_env.yaml), SUBMISSION_ID (default: generated),
#   EXTRA_ENV_JSON (optional JSON object of env vars merged into the runtime env).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
what=${1:?usage: submit.sh run|tune [args...]}
shift
case "$what" in
  run) entry=(rayfed-bpt run --no-progress "$@") ;;
  tune) entry=(rayfed-bpt tune "$@") ;;
  *) echo "submit.sh: first argument must be run or tune, got '$what'" >&2; exit 2 ;;
esac
address=${RAY_ADDRESS:-http://127.0.0.1:8265}
runtime_env=${RUNTIME_ENV:-$here/runtime_env.yaml}
id=${SUBMISSION_ID:-rayfed-$what-$(date +%Y%m%d-%H%M%S)-$$}
env_json=$(python3 - "$runtime_env" "${EXTRA_ENV_JSON:-{\}}" "$repo" <<'PY'
import json, sys, yaml
env = yaml.safe_load(open(sys.argv[1])) or {}
env.setdefault("env_vars", {}).update(json.loads(sys.argv[2]))
if env.get("working_dir") in (None, "."):
    env["working_dir"] = sys.argv[3]
print(json.dumps(env))
PY
)
echo "submitting $id to $address: ${entry[*]}"
# `ray job submit` waits for the job and tails its logs; its exit code is the job's.
set +e
ray job submit --address "$address" --submission-id "$id" \
  --runtime-env-json "$env_json" -- "${entry[@]}"
rc=$?
set -e
status=$(ray job status --address "$address" "$id" 2>&1 \
  | grep -oiE "job '$id' (succeeded|failed|stopped|running|pending)" | head -1 \
  | awk '{print toupper($NF)}' || true)
echo "job $id: ${status:-unknown} (exit $rc)"
[[ "$status" == "SUCCEEDED" ]] && exit 0
exit $(( rc == 0 ? 1 : rc ))
