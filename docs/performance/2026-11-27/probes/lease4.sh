#!/usr/bin/env bash
# The fourth GPU lease's runs (2026-11-27), in order; JSON lands in $OUT. Steps:
#   setup     as lease3.sh (wheels, Java + Kafka, broker up)
#   gputest   tests/gpu on this card
#   variants  decode_variants.py: image reuse and the same-size resize graph, on and off
#   decode    bench decode
#   model     bench model at batch 256, three times in one call (the spread of both sides)
#   matrix    SPECS="replicas:gpus ..." TAG=-x [MPS=1]: GPU-decode e2e runs, no peer; with
#             MPS=1 an MPS control daemon runs for the whole step, so every replica's CUDA
#             work shares one context per GPU instead of time-slicing between contexts
#   bias      model_bias_variants.py: how the export carries fc1's bias (Pad, Concat, none)
#   pyspy     DECODE=on|off: py-spy on two replicas of a 4-replica e2e run on GPU 0 (one
#             sampling every thread, one only the thread holding the GIL), raw stacks
#             (py-spy's wheel carried in .device/tools)
# Carries before `setup`: as lease3.sh (at most ~60 MiB per call, working tree included:
# part.04 and .device/small + .device/nv did not fit in one), plus .device/tools for pyspy.
# As run, on three machines of the 2×H200 kind (Intel Xeon, 32 cores):
#   A: setup, gputest, variants, decode, `SPECS="4:0 8:0" TAG=-nomps matrix`,
#      `SPECS="4:0 8:0 8:0,1" TAG=-mps MPS=1 matrix`, model (the Pad export), model_profile4.py
#      (decode_variants.py then had an image-reuse pool in GpuJpegDecoder, since dropped)
#   B: setup, bias, then with the Concat export in the tree: model, `DECODE=on pyspy` (twice:
#      the first found no py-spy binary), `DECODE=off pyspy`
#   C: decode_batch_probe.py with only the nvImageCodec wheels installed
set -uo pipefail
export PYTHONPATH=/root/site:$PWD
export PATH=/root/jre/bin:$PATH
step=${1:?setup|gputest|variants|decode|model|matrix|bias|pyspy}
probes=docs/performance/2026-11-27/probes
log() { echo "== $(date +%T) $*"; }
e2e=(--model b32 --precision fp16 --unique 64 --producers 4 --duration 10 --partitions 16)
case $step in
setup)
  bash $probes/lease3.sh setup
  ;;
gputest)
  python3 -m pytest -q -p no:cacheprovider -c /dev/null --rootdir . tests/gpu tests/unit/test_decode_gpu.py 2>&1 | tail -15
  ;;
variants)
  python3 $probes/decode_variants.py 2>&1 | grep -v "onnxruntime:Default\|^\[\|nvjpeg2k\|nvTIFF\|nvtiff\|nvJPEG2000" | tail -12
  ;;
decode)
  python3 -m moderator bench decode --seconds 3 --out "$OUT/decode.json" 2>&1 | tail -14
  ;;
model)
  for k in 1 2 3; do
    log "bench model, batch 256, run $k"
    python3 -m moderator bench model --model b32 --precision fp16 --batch 256 \
      --pixels device --seconds 4 --out "$OUT/model-b32-device-256-$k.json" 2>&1 | tail -3
  done
  ;;
matrix)
  if [ "${MPS:-0}" = 1 ]; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    nvidia-cuda-mps-control -d && log "MPS control daemon started"
  fi
  for spec in ${SPECS:?}; do
    n=${spec%%:*}; d=${spec#*:}
    log "replicas $n devices $d, GPU decode ${DECODE:-on}, MPS ${MPS:-0}"
    python3 -m moderator bench e2e "${e2e[@]}" --service-env "MODERATOR_PIPELINE__GPU_DECODE=${DECODE:-on}" \
      --events "${EVENTS:-8000}" --replicas "$n" --replica-devices "$d" --peer none \
      --timeout "${EVENTS_TIMEOUT:-90}" --out "$OUT/e2e-r$n-d${d//,/}${TAG:-}.json" 2>&1 | grep -E "^ours " | head -3
    [ "${MPS:-0}" = 1 ] && { echo get_server_list | nvidia-cuda-mps-control; tail -3 /tmp/mps-log/control.log; }
  done
  if [ "${MPS:-0}" = 1 ]; then echo quit | nvidia-cuda-mps-control; log "MPS stopped"; fi
  ;;
bias)
  python3 $probes/model_bias_variants.py 2>&1 | grep -v "onnxruntime:Default\|^\[\|Warning\|warn" | tail -60
  ;;
pyspy)
  [ -x /root/site/bin/py-spy ] || python3 -m pip install -q --no-deps --target /root/site /root/w/tools/py_spy-*.whl
  tag=${DECODE:-on}
  python3 -m moderator bench e2e "${e2e[@]}" --service-env "MODERATOR_PIPELINE__GPU_DECODE=$tag" \
    --events 8000 --replicas 4 --replica-devices 0 --peer none --timeout 90 \
    --out "$OUT/e2e-r4-d0-pyspy-$tag.json" > "$OUT/e2e-pyspy-$tag.log" 2>&1 &
  bench=$!
  until pids=$(pgrep -f "moderator serve" | head -2 | tr '\n' ' ') && [ -n "$pids" ] && [ "$(echo $pids | wc -w)" = 2 ]; do sleep 0.2; done
  set -- $pids
  log "recording replicas $1 (all threads) and $2 (GIL holder)"
  /root/site/bin/py-spy record -d 25 -r 100 -p "$1" -f raw --threads --idle --nonblocking -o "$OUT/pyspy-$tag-all.txt" > /dev/null 2>&1 &
  /root/site/bin/py-spy record -d 25 -r 100 -p "$2" -f raw --threads --gil --nonblocking -o "$OUT/pyspy-$tag-gil.txt" 2>&1 | tail -2
  wait $bench
  grep -E "^ours " "$OUT/e2e-pyspy-$tag.log"
  ;;
esac
