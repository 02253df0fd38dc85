#!/usr/bin/env bash
# `prefect deployment run apo/iteration` end to end on this machine: a local Prefect server, the `apo` process
# work pool, the deployment from prefect.yaml, one flow run executed by a worker that exits after it
# (--run-once); the server is stopped on exit. Everything lives under the storage root ($APO_HOME).
# Usage: scripts/prefect_iteration.sh ['{"max_episode_steps": 5}']   (a JSON object of stages.config.Config fields)
set -euo pipefail
cd "$(dirname "$0")/.."
export APO_PROJECT_DIR="$PWD"
export APO_HOME="${APO_HOME:-$PWD/storage_root}"
export PREFECT_HOME="$APO_HOME/prefect" DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_LOGGING_EXTRA_LOGGERS=stages
PORT="${PREFECT_PORT:-4242}"
export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
PREFECT=".venv/bin/prefect"
mkdir -p "$PREFECT_HOME"

"$PREFECT" server start --host 127.0.0.1 --port "$PORT" > "$PREFECT_HOME/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  .venv/bin/python -c "import urllib.request as u; u.urlopen('$PREFECT_API_URL/health', timeout=2)" \
    2> /dev/null && break
  kill -0 $SERVER 2>/dev/null || { echo "prefect server failed to start:"; tail -20 "$PREFECT_HOME/server.log"; exit 1; }
  sleep 1
done

"$PREFECT" work-pool inspect apo > /dev/null 2>&1 || "$PREFECT" work-pool create apo --type process > /dev/null
"$PREFECT" --no-prompt deploy --all > /dev/null
PARAMS=(); [ -n "${1:-}" ] && PARAMS=(--param "config=$1")
"$PREFECT" deployment run apo/iteration "${PARAMS[@]}"
"$PREFECT" worker start --pool apo --type process --run-once
# The flow run's final state decides the exit code.
.venv/bin/python - <<'PY'
import asyncio, sys
from prefect.client.orchestration import get_client

async def main():
    async with get_client() as client:
        runs = await client.read_flow_runs(limit=1, sort="EXPECTED_START_TIME_DESC")
        state = runs[0].state
        print(f"flow run {runs[0].name}: {state.type.value}")
        return 0 if state.is_completed() else 1

sys.exit(asyncio.run(main()))
PY
