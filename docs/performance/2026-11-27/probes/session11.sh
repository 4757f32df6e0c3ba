#!/usr/bin/env bash
# The second GPU session's runs (2026-11-27), in the order they ran; JSON lands in $OUT.
# Expects onnxruntime-gpu and the small wheels installed under /root/site (see the device
# notes in docs/performance.md) and, for `e2e`/`fetch`, Tansu on 127.0.0.1:9092. The `-6k`
# runs were `EVENTS=6000 TAG=-6k SPECS="8:0 8:0,1 16:0,1" session11.sh e2e`.
set -uo pipefail
export PYTHONPATH=/root/site:$PWD
step=${1:?model|e2e|fetch}
b32=$HOME/.cache/moderator/bench/clip-vit-b32-random
log() { echo "== $(date +%T) $*"; }
case $step in
model)
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  log "bench model, fc1 bias folded (the default fp16 export)"
  python3 -m moderator bench model --model b32 --precision fp16 --batch 1,32,256 \
    --pixels device --seconds 4 --out "$OUT/model-b32-device.json" 2>&1 | tail -12
  log "same graph, bias not folded: export, then ours only"
  python3 - <<'PY' 2>&1 | tail -3
from pathlib import Path
from moderator.export.clip import export_clip
import os
b32 = Path(os.environ["HOME"]) / ".cache/moderator/bench/clip-vit-b32-random"
export_clip(str(b32 / "hf"), b32 / "onnx-fp16-unfolded", precision="fp16",
            fold_mlp_bias=False, progress=lambda s: None, name="b32-unfolded")
PY
  python3 -m moderator bench model --model "$b32/onnx-fp16-unfolded" --peer-model "$b32/hf" \
    --batch 256 --pixels device --seconds 4 --out "$OUT/model-b32-device-unfolded.json" 2>&1 | tail -6
  log "folded again, host pixels"
  python3 -m moderator bench model --model b32 --precision fp16 --batch 256 \
    --pixels host --seconds 4 --out "$OUT/model-b32-host.json" 2>&1 | tail -6
  ;;
fetch)
  BROKER=127.0.0.1:9092 python3 docs/performance/2026-11-27/probes/fetch_probe.py 2>&1 | tail -14
  ;;
e2e)
  shift
  env=(--service-env MODERATOR_KAFKA__IDEMPOTENT_PRODUCER=false "$@")
  common=(--model b32 --precision fp16 --events ${EVENTS:-3000} --unique 64 --producers 4 --duration 10
          --partitions 16 --peer none --timeout 120)
  tag=${TAG:-}
  for spec in ${SPECS:-1:0 2:0,1 2:0,0 4:0,1 8:0,1 4:0}; do
    n=${spec%%:*}; devices=${spec#*:}
    log "e2e replicas $n devices $devices"
    python3 -m moderator bench e2e "${common[@]}" --replicas "$n" --replica-devices "$devices" \
      "${env[@]}" --out "$OUT/e2e-r$n-d${devices//,/}$tag.json" 2>&1 | tail -4
  done
  ;;
esac
