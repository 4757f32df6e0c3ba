#!/usr/bin/env bash
# The next GPU lease's runs (prepared in the seventh lease's session), in order; JSON in $OUT.
#   setup     as lease6.sh setup (wheels, Java + Kafka, broker up), plus py-spy from .device/tools
#   gputest   tests/gpu and the GPU decoder's unit tests on this card
#   graphs    cuda_graph_probe.py: ORT CUDA graphs per batch size (1-256) against serve's session
#             (its batch 4, 32 and 256 ran at the seventh lease's very end: h200-7-cuda-graph-probe.json)
#   model     bench model without and with --cuda-graphs (model.cuda_graphs), same call;
#             ROUNDS (default "1 2") names the rounds, BATCHES (default 1,32,256) the sizes
#   e2e       bench e2e, CPU decoding, 4 replicas on GPU 0, without and with model.cuda_graphs
#   stall     GPU decoding, 4 replicas on GPU 0: bench e2e with the event loop's lag in its notes,
#             and py-spy on two replicas through the half-load phase (all threads with idle
#             frames on one, the GIL holder on the other): what the batch worker and the loop
#             do while the batcher's queue fills (docs/performance.md, seventh lease)
#   warm      after the decode pool's and the model's warm-up at start (serve's first events had
#             met them, the first 2-4 s of every half-load phase above): 4 replicas on GPU 0
#             with the defaults (model.cuda_graphs now on), CPU decoding, then GPU decoding
# As run (2026-11-28), on two machines of the 2×H100 kind (Intel Xeon, 32 cores), one after the other
# (JSON in docs/performance/2026-11-28/, h100x2-8-…):
#   A (commit 9ce96dc): setup, gputest (2 failures: the graphs test's tolerance), ROUNDS=1 model,
#     e2e, stall (py-spy did not run: no /root/site/bin/py-spy), ROUNDS=2 model
#   B (7f41cef: the decode pool's and the batch sizes' warm-ups, graphs on by default): setup,
#     gputest (28 passed), warm, then lease5.sh cpu4's naive command with --events 12000
#     (→ -cpudecode-naive-warm), lease6.sh gpu2, ROUNDS=3 BATCHES=256 model
# Carries as in lease6.sh (.device/tools with the fifth onnxruntime-gpu part).
set -uo pipefail
export PYTHONPATH=/root/site:$PWD
export PATH=/root/jre/bin:$PATH
step=${1:?setup|gputest|graphs|model|e2e|stall|warm}
probes=docs/performance/2026-11-27/probes
noise="onnxruntime:Default\|^\[\|nvjpeg2k\|nvTIFF\|nvtiff\|nvJPEG2000"
log() { echo "== $(date +%T) $*"; }
case $step in
setup)
  bash $probes/lease6.sh setup
  # Its own target: pip --target leaves an existing bin/ as it is ("already exists"), so
  # /root/site/bin never got py-spy at the eighth lease.
  [ -x /root/pyspy/bin/py-spy ] || python3 -m pip install -q --no-deps --target /root/pyspy /root/w/tools/py_spy-*.whl
  ;;
gputest) bash $probes/lease5.sh gputest ;;
graphs) python3 $probes/cuda_graph_probe.py 2>&1 | grep -v "$noise" | tail -6 ;;
model)
  for round in ${ROUNDS:-1 2}; do
    for graphs in no-cuda-graphs cuda-graphs; do
      log "bench model, --$graphs, round $round"
      python3 -m moderator bench model --model b32 --precision fp16 --batch "${BATCHES:-1,32,256}" \
        --pixels device --seconds 3 "--$graphs" --out "$OUT/model-b32-device-$graphs-$round.json" \
        2>&1 | grep -E "^ *(1|32|256) |ratio" | head -5
    done
  done
  ;;
e2e)
  for graphs in false true; do
    log "4 replicas on GPU 0, CPU decoding, model.cuda_graphs=$graphs"
    python3 -m moderator bench e2e --model b32 --precision fp16 --unique 64 --producers 4 \
      --duration 10 --partitions 16 --service-env "MODERATOR_MODEL__CUDA_GRAPHS=$graphs" \
      --peer none --timeout 90 --events 16000 --replicas 4 --replica-devices 0 \
      --out "$OUT/e2e-r4-d0-cpudecode-graphs-$graphs.json" 2>&1 | grep -E "^ours |per batch|per second" | head -5
  done
  ;;
stall)
  python3 -m moderator bench e2e --model b32 --precision fp16 --unique 64 --producers 4 \
    --duration 15 --partitions 16 --service-env MODERATOR_PIPELINE__GPU_DECODE=on --peer none \
    --timeout 90 --events 16000 --replicas 4 --replica-devices 0 \
    --out "$OUT/e2e-r4-d0-gpudecode-stall.json" > "$OUT/e2e-stall.log" 2>&1 &
  bench=$!
  until grep -q "ours: producing" "$OUT/e2e-stall.log" 2>/dev/null; do
    kill -0 $bench 2>/dev/null || { tail -20 "$OUT/e2e-stall.log"; exit 1; }  # it failed early
    sleep 0.2
  done
  set -- $(pgrep -f "moderator serve" | head -2)
  log "half load: recording replicas $1 (all threads) and $2 (GIL holder)"
  /root/pyspy/bin/py-spy record -d 14 -r 100 -p "$1" -f raw --threads --idle --nonblocking -o "$OUT/pyspy-stall-all.txt" > /dev/null 2>&1 &
  /root/pyspy/bin/py-spy record -d 14 -r 100 -p "$2" -f raw --threads --gil --nonblocking -o "$OUT/pyspy-stall-gil.txt" 2>&1 | tail -2
  wait $bench
  grep -E "^ours |slowest tenth|per batch|loop lag|per second" "$OUT/e2e-stall.log"
  ;;
warm)
  for decode in off on; do
    log "4 replicas on GPU 0, defaults, pipeline.gpu_decode=$decode"
    python3 -m moderator bench e2e --model b32 --precision fp16 --unique 64 --producers 4 \
      --duration 10 --partitions 16 --service-env "MODERATOR_PIPELINE__GPU_DECODE=$decode" \
      --peer none --timeout 90 --events 16000 --replicas 4 --replica-devices 0 \
      --out "$OUT/e2e-r4-d0-gpudecode-$decode-warm.json" 2>&1 | grep -E "^ours |per batch|per second|loop lag" | head -6
  done
  ;;
esac
