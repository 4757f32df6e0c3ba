#!/usr/bin/env bash
# The fifth GPU lease's runs (2026-11-27), in order; JSON lands in $OUT. Steps:
#   setup     as lease3.sh (wheels, Java + Kafka, broker up), plus py-spy when carried
#   gil       gil_probe.py: the decode stage with a spinning Python thread beside it
#   gputest   tests/gpu on this card
#   decode    bench decode (with the `--gpu-processes 4` row)
#   gpue2e    GPU-decode e2e, 4 replicas on GPU 0, 16000 events: default decode pools, then
#             2 decode processes per replica (WORKERS=2); SWITCH=0.0002 gives every Python
#             process of the run that GIL switch interval (a sitecustomize), TAG names the JSON
#   model     bench model at batch 256, three times in one call
#   naive     CPU decoding (the default), 8 replicas on GPU 0, against the naive peer: the
#             ratio and our half-load p99 from one run
#   cpu4      CPU decoding, 4 replicas on GPU 0: alone, then against the naive peer
# Carries before `setup`: as lease4.sh.
# As run, on three machines of the 2×H200 kind (Intel Xeon, 32 cores), one after the other:
#   A (commit 5c951b1: one __cuda_array_interface__ read per image): setup, gil, gputest,
#     gpue2e, decode, model, naive (its first try lost a replica's port to a client
#     connection; bench e2e now picks ports below the ephemeral range), then bench decode
#     `--seconds 2 --gpu-processes 4` and `8` under an MPS control daemon
#   B (89e8c87: the draft reduction in uint8): setup, gputest (4 failures), then
#     resize_cuda_check.py, which found ORT's CUDA linear Resize of uint8 broken
#   C (the reduction in float32): setup, gputest, decode, `TAG=-sw5ms gpue2e`,
#     `SWITCH=0.0002 TAG=-sw02ms gpue2e`, cpu4
set -uo pipefail
export PYTHONPATH=/root/site:$PWD
export PATH=/root/jre/bin:$PATH
step=${1:?setup|gil|gputest|decode|gpue2e|model|naive|cpu4}
probes=docs/performance/2026-11-27/probes
noise="onnxruntime:Default\|^\[\|nvjpeg2k\|nvTIFF\|nvtiff\|nvJPEG2000"
log() { echo "== $(date +%T) $*"; }
e2e=(--model b32 --precision fp16 --unique 64 --producers 4 --duration 10 --partitions 16)
case $step in
setup)
  bash $probes/lease3.sh setup
  [ -d /root/w/tools ] && python3 -m pip install -q --no-deps --target /root/pyspy /root/w/tools/py_spy-*.whl
  ;;
gil)
  python3 $probes/gil_probe.py 2>&1 | grep -v "$noise" | tail -8
  ;;
gputest)
  python3 -m pytest -q -p no:cacheprovider -c /dev/null --rootdir . tests/gpu tests/unit/test_decode_gpu.py 2>&1 | tail -6
  ;;
decode)
  python3 -m moderator bench decode --seconds 3 --out "$OUT/decode.json" 2>&1 | grep -v "$noise" | tail -16
  ;;
gpue2e)
  if [ -n "${SWITCH:-}" ]; then  # every Python process of the run gets this GIL switch interval
    mkdir -p /tmp/sw && echo "import sys; sys.setswitchinterval(${SWITCH})" > /tmp/sw/sitecustomize.py
    export PYTHONPATH=/tmp/sw:$PYTHONPATH
  fi
  for workers in default ${WORKERS:-}; do
    extra=()
    [ "$workers" = default ] || extra=(--service-env "MODERATOR_PIPELINE__DECODE_WORKERS=$workers")
    log "4 replicas on GPU 0, GPU decode on, decode processes per replica: $workers"
    python3 -m moderator bench e2e "${e2e[@]}" --service-env MODERATOR_PIPELINE__GPU_DECODE=on \
      "${extra[@]}" --events 16000 --replicas 4 --replica-devices 0 --peer none --timeout 90 \
      --out "$OUT/e2e-r4-d0-gpudecode-w$workers${TAG:-}.json" 2>&1 | grep -E "^ours " | head -3
  done
  ;;
model)
  bash $probes/lease4.sh model
  ;;
naive)
  log "8 replicas on GPU 0, CPU decoding, vs the naive peer"
  python3 -m moderator bench e2e "${e2e[@]}" --events 16000 --replicas 8 --replica-devices 0 \
    --peer naive --no-peer-latency --timeout 90 --out "$OUT/e2e-r8-d0-cpudecode-naive.json" 2>&1 | tail -8
  ;;
cpu4)
  python3 -m moderator bench e2e "${e2e[@]}" --events 16000 --replicas 4 --replica-devices 0 \
    --peer none --timeout 90 --out "$OUT/e2e-r4-d0-cpudecode.json" 2>&1 | grep -E "^ours " | head -3
  python3 -m moderator bench e2e "${e2e[@]}" --events 12000 --replicas 4 --replica-devices 0 \
    --peer naive --no-peer-latency --timeout 60 --out "$OUT/e2e-r4-d0-cpudecode-naive.json" 2>&1 \
    | grep -E "^ours |^naive|^ratio" | head -5
  ;;
esac
