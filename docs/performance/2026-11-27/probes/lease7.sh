#!/usr/bin/env bash
# The seventh GPU lease's runs (2026-11-27, next day's session), in order; JSON lands in $OUT.
#   setup     as lease6.sh setup (wheels, Java + Kafka, broker up)
#   gputest   tests/gpu and the GPU decoder's unit tests on this card
#   variants  resize_variants.py: the sixth lease's Split + Concat front against planar input
#             (nvImageCodec decoding to channel planes, as serve now does), same process
#   decode    moderator bench decode --seconds 3 (serve's path in 1 and 4 processes, the peer)
#   modes     decode_modes_probe.py (1 and 4 processes; two threads / one / decode / resize)
#   gpue2e    GPU decoding, 4 replicas on GPU 0: the warm-up where serve opens its decoders,
#             and the per-batch stage figures at half load; then the same with a 0.2 ms GIL
#             switch interval in every process (SWITCH, lease5.sh)
#   gpu2      GPU decoding, 4 replicas on GPU 0, then 8 over GPUs 0 and 1, same call
# Carries as in lease6.sh. As run, on one 2×H200 host (Intel Xeon, 32 cores), commit 9f8d3ad:
#   setup, gputest (25 passed, 1 skipped), variants, decode, modes, gpue2e, gpu2, then
#   `lease5.sh cpu4` and `lease5.sh model`, then by hand (the same bench e2e command as gpue2e,
#   no SWITCH) with --service-env MODERATOR_PIPELINE__DECODE_WORKERS=2 and =8 (→ -w2, -w8; 8 is
#   what bench e2e gives each of 4 replicas on 32 cores anyway),
#   once more with the defaults as a control (→ -control), and `bench decode` again
#   (→ decode-2.json). The host slowed down over the lease (the same default e2e run: 945
#   verdicts/s first, 665 last), so compare each row with its neighbours.
set -uo pipefail
export PYTHONPATH=/root/site:$PWD
export PATH=/root/jre/bin:$PATH
step=${1:?setup|gputest|variants|decode|modes|gpue2e|gpu2}
probes=docs/performance/2026-11-27/probes
noise="onnxruntime:Default\|^\[\|nvjpeg2k\|nvTIFF\|nvtiff\|nvJPEG2000"
log() { echo "== $(date +%T) $*"; }
e2e=(--model b32 --precision fp16 --unique 64 --producers 4 --duration 10 --partitions 16
  --service-env MODERATOR_PIPELINE__GPU_DECODE=on --peer none --timeout 90)
case $step in
setup | modes | gpu2) bash $probes/lease6.sh "$step" ;;
gputest | decode) bash $probes/lease5.sh "$step" ;;
variants) python3 $probes/resize_variants.py 2>&1 | grep -v "$noise" | tee "$OUT/resize-variants.txt" ;;
gpue2e)
  for switch in default 0.0002; do
    tag=-7
    if [ "$switch" != default ]; then  # every Python process of the run gets this interval
      mkdir -p /tmp/sw && echo "import sys; sys.setswitchinterval($switch)" > /tmp/sw/sitecustomize.py
      export PYTHONPATH=/tmp/sw:$PYTHONPATH
      tag=-7-sw02ms
    fi
    log "4 replicas on GPU 0, GPU decoding, GIL switch interval: $switch"
    python3 -m moderator bench e2e "${e2e[@]}" --events 16000 --replicas 4 --replica-devices 0 \
      --out "$OUT/e2e-r4-d0-gpudecode$tag.json" 2>&1 | grep -E "^ours |slowest tenth|per batch" | head -5
  done
  ;;
esac
