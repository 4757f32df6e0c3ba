#!/usr/bin/env bash
# The third GPU lease's runs (2026-11-27), in order; JSON lands in $OUT. Steps:
#   setup    wheels (onnxruntime-gpu parts, small wheels, nvImageCodec), Java + Kafka, broker up
#   gputest  tests/gpu: serve's GPU JPEG decoder against Pillow, on this card
#   decode   bench decode: serve's GPU path vs torch nvJPEG vs CPU
#   model    bench model, efficient attention vs ORT's choice, each against torch.compile
#   e2e      8 replicas on one GPU vs the naive peer, GPU decode on; then off; then 1 replica
#   e2e2     8 replicas over two GPUs (needs a 2-GPU host)
# Carries before `setup`: .device/wheels/*.part.00..04 (one per call, copied to /root/w),
# .device/small + .device/nv, .device/java/jre.tar.xz, .device/java/kafka.tar.
set -uo pipefail
export PYTHONPATH=/root/site:$PWD
export PATH=/root/jre/bin:$PATH
step=${1:?setup|gputest|decode|model|e2e|e2e2}
log() { echo "== $(date +%T) $*"; }
e2e=(--model b32 --precision fp16 --unique 64 --producers 4 --duration 10 --partitions 16)
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
  python3 -m moderator bench e2e "${e2e[@]}" --events 12000 --replicas 8 --replica-devices 0 \
    --peer naive --no-peer-latency --timeout 60 --out "$OUT/e2e-r8-d0-naive.json" 2>&1 | tail -8
  log "8 replicas on GPU 0, GPU decode off"
  python3 -m moderator bench e2e "${e2e[@]}" --events 6000 --replicas 8 --replica-devices 0 \
    --peer none --timeout 90 --service-env MODERATOR_PIPELINE__GPU_DECODE=off \
    --out "$OUT/e2e-r8-d0-cpudecode.json" 2>&1 | tail -4
  ;;
e2e2)
  log "8 replicas over GPUs 0 and 1, GPU decode (auto)"
  python3 -m moderator bench e2e "${e2e[@]}" --events 12000 --replicas 8 --replica-devices 0,1 \
    --peer none --timeout 90 --out "$OUT/e2e-r8-d01.json" 2>&1 | tail -4
  log "1 replica on GPU 0, GPU decode (auto)"
  python3 -m moderator bench e2e "${e2e[@]}" --events 6000 --replicas 1 --replica-devices 0 \
    --peer none --timeout 90 --out "$OUT/e2e-r1-d0.json" 2>&1 | tail -4
  ;;
esac
