#!/usr/bin/env bash
# The next GPU lease's runs (docs/performance.md, "Next GPU lease, in order"); JSON lands in $OUT.
# Before: carry the onnxruntime-gpu parts and the small wheels (device notes), then
# .device/java/jre.tar.xz and .device/java/kafka.tar (scripts/bundle-kafka.sh), one per call.
#   setup   install the wheels, unpack Java + Kafka, start Apache Kafka
#   model   bench model, efficient attention vs ORT's choice (same card, one after the other)
#   e2e     8 replicas on one GPU vs the naive peer, then the replica matrix again
#   resize  nvImageCodec decode + the ONNX resize graph (needs .device/nv wheels installed)
set -uo pipefail
export PYTHONPATH=/root/site:$PWD
export PATH=/root/jre/bin:$PATH
step=${1:?setup|model|e2e|resize}
log() { echo "== $(date +%T) $*"; }
case $step in
setup)
  cat /root/w/onnxruntime_gpu-*.part.* > /root/w/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
  rm -f /root/w/*.part.*
  python3 -m pip install -q --no-deps --target /root/site /root/w/*.whl .device/small/*.whl
  tar -C /root -xJf /root/w/jre.tar.xz
  mkdir -p ~/.cache/moderator && tar -C ~/.cache/moderator -xf /root/w/kafka.tar
  scripts/services.sh up kafka
  ;;
model)
  for attention in efficient auto; do
    log "bench model --attention $attention"
    python3 -m moderator bench model --model b32 --precision fp16 --batch 1,32,256 \
      --pixels device --seconds 4 --attention "$attention" \
      --out "$OUT/model-b32-device-$attention.json" 2>&1 | tail -8
  done
  ;;
e2e)
  log "8 replicas on GPU 0 vs the naive peer"
  python3 -m moderator bench e2e --model b32 --precision fp16 --events 6000 --unique 64 \
    --producers 4 --duration 10 --partitions 16 --replicas 8 --replica-devices 0 \
    --peer naive --no-peer-latency --timeout 60 --out "$OUT/e2e-r8-d0-naive.json" 2>&1 | tail -6
  for spec in 1:0 2:0 8:0,1; do
    n=${spec%%:*}; devices=${spec#*:}
    log "replicas $n devices $devices"
    python3 -m moderator bench e2e --model b32 --precision fp16 --events 6000 --unique 64 \
      --producers 4 --duration 10 --partitions 16 --peer none --timeout 120 \
      --replicas "$n" --replica-devices "$devices" \
      --out "$OUT/e2e-r$n-d${devices//,/}.json" 2>&1 | tail -3
  done
  ;;
resize)  # carry .device/nv in this call
  python3 -m pip install -q --no-deps --target /root/site .device/nv/*.whl
  python3 docs/performance/2026-11-27/probes/resize_graph.py gpu 2>&1 | grep -v "^\[" | tail -6
  ;;
esac
