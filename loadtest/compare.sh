#!/usr/bin/env bash
# Protocol capacity comparison (`make bench-compare`): one gateway serving WebSocket, gRPC and MRCP, and
# `python -m loadtest compare`: for each protocol the largest N of concurrent real-time sessions with partial
# p99 <= 150 ms, trials interleaved round by round on the same audio. Writes $OUT/compare.json and the server log.
set -euo pipefail
# Finals from the CTC decoder unless SERVE_ARGS says otherwise: the search's WER guard compares finals under
# load with one stream's, and the default Whisper second pass is shed under load by design (its coverage and
# final latency are measured on their own, docs/benchmarks.md), so it would stop the search on WER, not latency.
OUT=${1:-bench-results}
PY=${PY:-.venv/bin/python}
WS_PORT=${WS_PORT:-18080}
METRICS_PORT=${METRICS_PORT:-19464}
GRPC_PORT=${GRPC_PORT:-18051}
SIP_PORT=${SIP_PORT:-15060}
RTP_PORTS=${RTP_PORTS:-42000-42999}
DURATION_S=${DURATION_S:-30}
mkdir -p "$OUT"
[ -f "$OUT/audio/refs.tsv" ] || "$PY" -m loadtest make-audio --out "$OUT/audio"
"$PY" -m gateway.cli serve --ws-port "$WS_PORT" --metrics-port "$METRICS_PORT" --grpc-port "$GRPC_PORT" \
    --sip-port "$SIP_PORT" --mrcp-port 0 --rtp-ports "$RTP_PORTS" \
    --max-streams "${MAX_STREAMS:-256}" --max-batch-size "${MAX_BATCH:-64}" ${SERVE_ARGS:---final-pass none} \
    >"$OUT/server-compare.log" 2>&1 &
SERVER=$!
trap 'kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 240); do
  curl -sf "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$OUT/server-compare.log"; exit 1; }
  sleep 0.5
done
"$PY" -m loadtest compare --protocols "${PROTOCOLS:-websocket,grpc,mrcp}" \
    --url "ws://127.0.0.1:$WS_PORT/v1/stream" --grpc-url "grpc://127.0.0.1:$GRPC_PORT" \
    --sip-url "sip:127.0.0.1:$SIP_PORT" --audio-dir "$OUT/audio" --refs "$OUT/audio/refs.tsv" \
    --p99-ms 150 --duration-s "$DURATION_S" --metrics-url "http://127.0.0.1:$METRICS_PORT/metrics" \
    --server-pid "$SERVER" --out "$OUT/compare.json" ${COMPARE_ARGS:-}
