#!/usr/bin/env bash
# The sixth GPU lease's runs (2026-11-27), in order; JSON lands in $OUT. Steps:
#   setup     as lease5.sh setup (wheels, Java + Kafka, broker up, py-spy when carried)
#   gputest   tests/gpu and the GPU decoder's unit tests on this card
#   modes     decode_modes_probe.py: serve's GPU path in 1 and 4 processes, two threads /
#             one thread / decode only / resize only
#   gpue2e    GPU decoding, 4 replicas on GPU 0, 16000 events: the rate, then at half load
#             which stage holds the slowest tenth of events (bench e2e's note line)
#   warm      warm_probe.py: what the GPU decoder's first runs cost, per thread
#   profile   resize_profile.py: the resize graph's GPU time by kernel
#   gpu2      GPU decoding, 4 replicas on GPU 0, then 8 spread over GPUs 0 and 1, same call
# Carries before `setup`, one call each (a call carries 64 MiB at most), each copied to
# /root/w: the five onnxruntime-gpu parts (the fifth with .device/small and .device/tools),
# .device/nv, .device/java/jre.tar.xz, then .device/java/kafka.tar with `setup` itself.
# As run, on four machines of the 2×H200 kind (Intel Xeon, 32 cores), one after the other:
#   A (commit 5b481d5): setup, gputest (the fifth lease's review fixes: 22 passed), modes,
#     gpue2e (→ -nowarm.json); the machine went back while idle
#   B (e01eb3b + probes: warm-up in the stage threads): setup, gputest, warm, profile, gpue2e
#     (→ -warm.json), gpu2 (→ -pair.json)
#   C: resize_variants.py alone (onnxruntime-gpu and nvImageCodec only, no broker)
#   D (Split and Concat to planar): setup, gputest, profile, modes, lease5.sh decode, gpue2e
#     (→ -split.json), modes again
#   E: started for `SWITCH=0.0002 lease5.sh gpue2e` with the warm-up (the fifth lease's switch-
#     interval run was confounded by first runs), but the start took ~2 min of device time and
#     the rest did not fit in what was left; nothing ran
# Since: the warm-up runs once where serve opens its decoders (GpuJpegDecoder.warm_up), not in
# the batch worker's stage threads as at B and D.
set -uo pipefail
export PYTHONPATH=/root/site:$PWD
export PATH=/root/jre/bin:$PATH
step=${1:?setup|gputest|modes|gpue2e|warm|profile|gpu2}
probes=docs/performance/2026-11-27/probes
noise="onnxruntime:Default\|^\[\|nvjpeg2k\|nvTIFF\|nvtiff\|nvJPEG2000"
log() { echo "== $(date +%T) $*"; }
e2e=(--model b32 --precision fp16 --unique 64 --producers 4 --duration 10 --partitions 16
  --service-env MODERATOR_PIPELINE__GPU_DECODE=on --peer none --timeout 90)
gpu_e2e() {  # replicas devices tag
  log "$1 replicas on GPUs $2, GPU decoding"
  python3 -m moderator bench e2e "${e2e[@]}" --events 16000 --replicas "$1" --replica-devices "$2" \
    --out "$OUT/e2e-$3.json" 2>&1 | grep -E "^ours |slowest tenth" | head -4
}
case $step in
setup | gputest) bash $probes/lease5.sh "$step" ;;
modes) python3 $probes/decode_modes_probe.py 2>&1 | grep -v "$noise" | tail -10 ;;
gpue2e) gpu_e2e 4 0 r4-d0-gpudecode${TAG:-} ;;
warm) python3 $probes/warm_probe.py 2>&1 | grep -v "$noise" | tail -3 ;;
profile) python3 $probes/resize_profile.py 2>&1 | grep -v "$noise" | tail -4 ;;
gpu2)
  gpu_e2e 4 0 r4-d0-gpudecode-pair
  gpu_e2e 8 0,1 r8-d01-gpudecode-pair
  ;;
esac
