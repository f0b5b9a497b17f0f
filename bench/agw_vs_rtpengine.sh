#!/usr/bin/env bash
# Relayed packets per CPU-second ("per core") of `mediasec agw` vs rtpengine in userspace
# (--table=-1), same machine, same run, same load generator (`mediasec agw load`: sets N calls
# up over ng, the UE side sends SRTP or the core side plain RTP at a paced rate, one packet per
# call per round, and samples the relayed content). Each relay runs pinned to CPU $RELAY_CPU
# with one worker thread (ours: a current-thread runtime for ng plus its one media thread; the
# whole process is pinned and counted); the CPU time it burns (utime+stime from /proc) during the run divides
# the packets it delivered. Paced, not flooded: rtpengine 10.5 discards a stream's packets once
# its socket queue overflows ("UDP receive queue exceeded"), so a flood measures nothing.
# SINKS: the load generator's receiver per table (`--sink`): `block` (blocking recvfrom; on
# loopback each relayed packet's sendto also wakes it, a cost the relay pays only because the
# next hop is on the same machine) and/or `poll` (drains without blocking, then sleeps 50 µs:
# no wake-up is charged to the relay).
# usage: bench/agw_vs_rtpengine.sh [path/to/mediasec]   (cargo build --release -p mediasec)
# Needs: rtpengine (Debian rtpengine-daemon), taskset (util-linux), python3.
set -euo pipefail
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/mediasec}
RELAY_CPU=${RELAY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SECS=${SECS:-3}
REPS=${REPS:-3}
CALLS=${CALLS:-100}
RATE=${RATE:-30000}
PAYLOAD=${PAYLOAD:-160}
SUITE=${SUITE:-AES_CM_128_HMAC_SHA1_80}
SINKS=${SINKS:-block poll}
port() { python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
RTPE_NG=$(port); OURS_NG=$(port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
taskset -c "$RELAY_CPU" rtpengine --config-file=none --foreground --table=-1 --interface=127.0.0.1 \
  --listen-ng=127.0.0.1:"$RTPE_NG" --port-min=46000 --port-max=46999 --delete-delay=0 \
  --num-threads=1 --log-level=3 >/dev/null 2>&1 &
RTPE_PID=$!; pids+=($RTPE_PID)
taskset -c "$RELAY_CPU" "$BIN" agw --threads 1 --media-threads 1 --listen-ng 127.0.0.1:"$OURS_NG" --interface 127.0.0.1 \
  --port-min 47000 --port-max 47999 >/dev/null 2>&1 &
OURS_PID=$!; pids+=($OURS_PID)
# The same build with its media sends by one sendto per packet instead of io_uring batches.
SYSC_NG=$(port)
taskset -c "$RELAY_CPU" "$BIN" agw --threads 1 --media-threads 1 --listen-ng 127.0.0.1:"$SYSC_NG" --interface 127.0.0.1 \
  --port-min 48000 --port-max 48999 --no-io-uring >/dev/null 2>&1 &
SYSC_PID=$!; pids+=($SYSC_PID)
sleep 1.5
HZ=$(getconf CLK_TCK)
best() { # ng-port pid direction sink -> "best packets/CPU-s  that run's loss %,p50/p99 µs"
  local b=0 bl=0
  for _ in $(seq "$REPS"); do
    t0=$(ticks "$2")
    out=$(taskset -c "$LOAD_CPU" "$BIN" agw load --ng 127.0.0.1:"$1" --direction "$3" --calls "$CALLS" \
      --rate "$RATE" --payload "$PAYLOAD" --suite "$SUITE" --seconds "$SECS" --sink "$4" --json) || { echo "load failed: $out" >&2; exit 1; }
    t1=$(ticks "$2")
    read -r v l < <(python3 -c 'import json,sys;d=json.loads(sys.argv[1]);cpu=(int(sys.argv[3])-int(sys.argv[2]))/int(sys.argv[4]);t=d["latency_us"];print(int(d["received_total"]/cpu) if cpu else 0, "%s,%s/%s" % (round(100*d["loss"],2), t["p50"], t["p99"]))' "$out" "$t0" "$t1" "$HZ")
    if [ "$v" -gt "$b" ]; then b=$v; bl=$l; fi
  done
  echo "$b $bl"
}
echo "| sink | direction | suite | payload | offered | rtpengine pkt/CPU-s (loss %, p50/p99 µs) | mediasec agw pkt/CPU-s (loss %, p50/p99 µs) | ratio | mediasec agw --no-io-uring (loss %, p50/p99 µs) | ratio |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for sink in $SINKS; do
  for dir in srtp-to-rtp rtp-to-srtp; do
    read -r r rl < <(best "$RTPE_NG" "$RTPE_PID" "$dir" "$sink")
    read -r o ol < <(best "$OURS_NG" "$OURS_PID" "$dir" "$sink")
    read -r s sl < <(best "$SYSC_NG" "$SYSC_PID" "$dir" "$sink")
    ratio=$(python3 -c "print(f'{$o/$r:.2f}' if $r else 'n/a')")
    sratio=$(python3 -c "print(f'{$s/$r:.2f}' if $r else 'n/a')")
    echo "| $sink | $dir | $SUITE | $PAYLOAD B | $RATE pkt/s, $CALLS calls | $r ($rl) | $o ($ol) | **$ratio×** | $s ($sl) | $sratio× |"
  done
done
