#!/usr/bin/env bash
# The third GPU lease's runs (2026-11-27), in order; JSON lands in $OUT. Steps:
#   setup    wheels (onnxruntime-gpu parts, small wheels, nvImageCodec), Java + Kafka, broker up
#   gputest  tests/gpu: serve's GPU JPEG decoder against Pillow, on this card
#   decode   bench decode: serve's GPU path vs torch nvJPEG vs CPU
#   model    bench model, efficient attention vs ORT's choice, each against torch.compile
#   e2e      8 replicas on one GPU vs the naive peer, GPU decode on; then off
#   matrix   SPECS="replicas:gpus ..." TAG=-x: GPU-decode runs per replica layout, no peer
# As run, on three machines of the 2×H200 kind, at commits 7c76182 (setup, gputest, decode,
# fill_probe.py, model, e2e, `SPECS="2:0,0 4:0,1 8:0,1" TAG=-gpudecode matrix`), 86e2055
# (setup, gputest, decode, `SPECS="8:0 8:0,1 4:0 4:0,1" TAG=-gpudecode2 matrix`) and 19ddde9
# (setup, gputest, `SPECS="8:0 8:0,1 4:0" TAG=-gpudecode3 EVENTS_TIMEOUT=60 matrix`).
# GPU decoding was on by default at those commits; it is opt-in now (pipeline.gpu_decode).
# Carries before `setup`: .device/wheels/*.part.00..04 (one per call, copied to /root/w),
# .device/small + .device/nv, .device/java/jre.tar.xz, .device/java/kafka.tar.
set -uo pipefail
export PYTHONPATH=/root/site:$PWD
export PATH=/root/jre/bin:$PATH
step=${1:?setup|gputest|decode|model|e2e|matrix}
log() { echo "== $(date +%T) $*"; }
e2e=(--model b32 --precision fp16 --unique 64 --producers 4 --duration 10 --partitions 16)
gpu=(--service-env MODERATOR_PIPELINE__GPU_DECODE=on)
case $step in
setup)
  cat /root/w/onnxruntime_gpu-*.part.* > /root/w/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
  rm -f /root/w/*.part.*
  python3 -m pip install -q --no-deps --target /root/site /root/w/*.whl /root/w/small/*.whl /root/w/nv/*.whl
  tar -C /root -xJf /root/w/jre.tar.xz
  mkdir -p ~/.cache/moderator && tar -C ~/.cache/moderator -xf /root/w/kafka.tar
  scripts/services.sh up kafka 2>&1 | tail -2
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  ;;
gputest)
  python3 -m pytest -q -p no:cacheprovider -c /dev/null --rootdir . tests/gpu tests/unit/test_decode_gpu.py 2>&1 | tail -15
  ;;
decode)
  python3 -m moderator bench decode --seconds 3 --out "$OUT/decode.json" 2>&1 | tail -14
  ;;
model)
  for attention in efficient auto; do
    log "bench model --attention $attention"
    python3 -m moderator bench model --model b32 --precision fp16 --batch 1,32,256 \
      --pixels device --seconds 4 --attention "$attention" \
      --out "$OUT/model-b32-device-$attention.json" 2>&1 | tail -7
  done
  ;;
e2e)
  log "8 replicas on GPU 0, GPU decode (auto), vs the naive peer"
  python3 -m moderator bench e2e "${e2e[@]}" "${gpu[@]}" --events 12000 --replicas 8 \
    --replica-devices 0 --peer naive --no-peer-latency --timeout 60 \
    --out "$OUT/e2e-r8-d0-naive.json" 2>&1 | tail -8
  log "8 replicas on GPU 0, GPU decode off"
  python3 -m moderator bench e2e "${e2e[@]}" --events 6000 --replicas 8 --replica-devices 0 \
    --peer none --timeout 90 --service-env MODERATOR_PIPELINE__GPU_DECODE=off \
    --out "$OUT/e2e-r8-d0-cpudecode.json" 2>&1 | tail -4
  ;;
matrix)
  for spec in ${SPECS:?}; do
    n=${spec%%:*}; d=${spec#*:}
    log "replicas $n devices $d, GPU decode on"
    python3 -m moderator bench e2e "${e2e[@]}" "${gpu[@]}" --events 8000 --replicas "$n" \
      --replica-devices "$d" --peer none --timeout "${EVENTS_TIMEOUT:-90}" \
      --out "$OUT/e2e-r$n-d${d//,/}${TAG:-}.json" 2>&1 | grep -E "^ours " | head -3
  done
  ;;
esac
