#!/usr/bin/env bash
# Relayed packets/s per core of `mediasec agw` vs rtpengine in userspace (--table=-1), same
# machine, same run, same load generator (`mediasec agw load`, which sets calls up over ng,
# sends UE SRTP or core RTP as fast as it can and samples the relayed content).
# Each relay is pinned to CPU $RELAY_CPU, the generator to CPU $LOAD_CPU; best of $REPS.
# usage: bench/agw_vs_rtpengine.sh [path/to/mediasec]   (build with cargo build --release -p mediasec)
# Needs: rtpengine (Debian rtpengine-daemon), taskset (util-linux).
set -euo pipefail
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/mediasec}
RELAY_CPU=${RELAY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SECS=${SECS:-3}
REPS=${REPS:-3}
CALLS=${CALLS:-1}
PAYLOAD=${PAYLOAD:-160}
SUITE=${SUITE:-AES_CM_128_HMAC_SHA1_80}
port() { python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
RTPE_NG=$(port); OURS_NG=$(port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
taskset -c "$RELAY_CPU" rtpengine --config-file=none --foreground --table=-1 --interface=127.0.0.1 \
  --listen-ng=127.0.0.1:"$RTPE_NG" --port-min=46000 --port-max=46999 --delete-delay=0 \
  --num-threads=1 --log-level=3 >/dev/null 2>&1 &
pids+=($!)
taskset -c "$RELAY_CPU" "$BIN" agw --threads 1 --listen-ng 127.0.0.1:"$OURS_NG" --interface 127.0.0.1 \
  --port-min 47000 --port-max 47999 >/dev/null 2>&1 &
pids+=($!)
sleep 1.5
best() { # relay-port direction -> best relayed pkt/s (and sampled-content check)
  local b=0
  for _ in $(seq "$REPS"); do
    out=$(taskset -c "$LOAD_CPU" "$BIN" agw load --ng 127.0.0.1:"$1" --direction "$2" --calls "$CALLS" \
      --payload "$PAYLOAD" --suite "$SUITE" --seconds "$SECS" --json) || { echo "load failed: $out" >&2; exit 1; }
    r=$(python3 -c 'import json,sys;d=json.loads(sys.argv[1]);print(int(d["relayed_pps"]))' "$out")
    [ "$r" -gt "$b" ] && b=$r
  done
  echo "$b"
}
echo "| direction | suite | payload | rtpengine pkt/s | mediasec agw pkt/s | ratio |"
echo "|---|---|---|---|---|---|"
for dir in srtp-to-rtp rtp-to-srtp; do
  r=$(best "$RTPE_NG" "$dir"); o=$(best "$OURS_NG" "$dir")
  ratio=$(python3 -c "print(f'{$o/$r:.2f}' if $r else 'n/a')")
  echo "| $dir | $SUITE | $PAYLOAD B | $r | $o | $ratio× |"
done
