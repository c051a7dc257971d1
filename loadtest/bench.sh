#!/usr/bin/env bash
# The standard latency benchmark (`make bench`): start a gateway on the bundled model, find the largest
# number of concurrent real-time streams whose partial-result p99 stays at or under 150 ms, stop it.
# Writes $OUT/bench.json, $OUT/single.json, $OUT/bench-cdf.png and the server log.
set -euo pipefail
OUT=${1:-bench-results}
PY=${PY:-.venv/bin/python}
WS_PORT=${WS_PORT:-18080}
METRICS_PORT=${METRICS_PORT:-19464}
LOOP=${XLGATE_EVENT_LOOP:-uvloop}
DURATION_S=${DURATION_S:-30}
mkdir -p "$OUT"
[ -f "$OUT/audio/refs.tsv" ] || "$PY" -m loadtest make-audio --out "$OUT/audio"
"$PY" -m gateway.cli serve --ws-port "$WS_PORT" --metrics-port "$METRICS_PORT" --event-loop "$LOOP" \
    --max-streams "${MAX_STREAMS:-256}" --max-batch-size "${MAX_BATCH:-64}" ${SERVE_ARGS:-} \
    >"$OUT/server-$LOOP.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/server-$LOOP.log"; exit 1; }
  sleep 0.5
done
URL="ws://127.0.0.1:$WS_PORT/v1/stream"
"$PY" -m loadtest single --url "$URL" --audio-dir "$OUT/audio" --refs "$OUT/audio/refs.tsv" \
    --out "$OUT/single-$LOOP.json"
"$PY" -m loadtest find-max --url "$URL" --audio-dir "$OUT/audio" --refs "$OUT/audio/refs.tsv" \
    --baseline "$OUT/single-$LOOP.json" --p99-ms 150 --duration-s "$DURATION_S" \
    --metrics-url "http://127.0.0.1:$METRICS_PORT/metrics" --server-pid $SERVER \
    --out "$OUT/bench-$LOOP.json" --plot "$OUT/bench-cdf-$LOOP.png" ${FIND_MAX_ARGS:-}
