#!/usr/bin/env bash
# SIP proxy under load: `mediasec cscf --role scscf` vs Kamailio 5.6 (tm), driven by SIPp.
# Each server answers the same request with one server transaction: SIPp (UAC scenario
# bench/sipp/uac_480.xml) sends an out-of-dialog OPTIONS for sip:nobody@b.example, a user of
# the server's domain without registration; our S-CSCF's proxy core answers 480 (registrar
# lookup finds no binding), Kamailio answers it with t_newtran() + t_reply("480") from a
# minimal config (one UDP worker: children=1). Server pinned to CPU $SRV_CPU, SIPp to
# CPU $LOAD_CPU (taskset). Per fixed offered rate ($RATES, $SECS s each): final responses/s,
# the server's CPU time (utime+stime from /proc, all its processes) per 1000 requests, counted
# from the run's start until $SETTLE s after SIPp ends (so the transactions' Timer J / wait
# timer clean-up is paid for too), SIPp's failed calls (receive timeouts, unexpected
# messages) and our 503s from /metrics. Then an overload run: our CSCF offered $OVERLOAD_X × its
# measured capacity (requests per CPU-second = what one core can answer), reporting the
# fractions answered 480 / refused 503 / failed, the kernel's drops on its UDP socket (and elsewhere: SIPp's) and its
# VmRSS before, right after and $SETTLE s after; twice, then Kamailio at the same rate.
# usage: bench/cscf_sipp.sh [path/to/mediasec]   (cargo build --release -p mediasec)
# Needs: sipp (Debian sip-tester), kamailio, taskset (util-linux), python3.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/mediasec}
SRV_CPU=${SRV_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SECS=${SECS:-5}
RATES=${RATES:-1000 2000 5000 10000 20000}
SETTLE=${SETTLE:-34}
OVERLOAD_X=${OVERLOAD_X:-2}
OVERLOAD_RATE=${OVERLOAD_RATE:-}
# Our CSCF logs every request at info; both servers log warnings and errors only.
export RUST_LOG=${RUST_LOG:-warn}
KAM_MODULES=${KAM_MODULES:-/usr/lib/x86_64-linux-gnu/kamailio/modules}
# Kamailio's shared memory (MB): its default 64 runs out at 2000 req/s (each transaction stays
# for tm's wait timer, 5 s), after which it answers "500 No error (2/SL)".
KAM_SHM_MB=${KAM_SHM_MB:-2048}
SCENARIO=$HERE/sipp/uac_480.xml
TMP=$(mktemp -d)
HZ=$(getconf CLK_TCK)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
# CPU ticks (utime+stime, threads included) summed over the given PIDs.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
# The kernel's UDP receive-buffer drops on the whole machine (/proc/net/snmp RcvbufErrors).
rcvbuf_errors() { awk '/^Udp:/{n++; if(n==1){for(i=1;i<=NF;i++)h[i]=$i} else {for(i=1;i<=NF;i++) if(h[i]=="RcvbufErrors") print $i}}' /proc/net/snmp; }
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/{print $2}' "/proc/$1/status"; }
# Kernel drops on the UDP socket bound to 127.0.0.1:$2 (the process $1's network namespace).
udp_drops() { python3 - "$1" "$2" <<'EOF'
import sys
want = "0100007F:%04X" % int(sys.argv[2])
for line in open("/proc/%s/net/udp" % sys.argv[1]).read().splitlines()[1:]:
    f = line.split()
    if f[1] == want:
        print(f[-1]); break
else:
    print(0)
EOF
}
# Sum of the samples of a metric of ours.
metric() { python3 - "$METRICS" "$1" <<'EOF'
import sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
print(int(sum(float(l.split()[-1]) for l in text.splitlines() if l.split(" ")[0].split("{")[0] == sys.argv[2])))
EOF
}
# Our 503s, all three kinds: TU queue ¾ full, the transaction table full (stateless), the UDP receive queue deep (stateless, before any transaction).
refused() { echo $(( $(metric mediasec_sip_overload_refused_total) + $(metric mediasec_sip_transactions_full_total) + $(metric mediasec_sip_udp_queue_refused_total) )); }

# --- our S-CSCF ---
taskset -c "$SRV_CPU" "$BIN" cscf --role scscf --domain b.example --listen 127.0.0.1:0 --metrics 127.0.0.1:0 \
  >"$TMP/ours.out" 2>"$TMP/ours.err" &
OURS_PID=$!; pids+=("$OURS_PID")
for _ in $(seq 50); do grep -q '^metrics on' "$TMP/ours.out" 2>/dev/null && break; sleep 0.1; done
OURS=$(awk '/^listening on/{print $3}' "$TMP/ours.out")
METRICS=$(awk '/^metrics on/{print $3}' "$TMP/ours.out")
[ -n "$OURS" ] && [ -n "$METRICS" ] || { echo "mediasec cscf did not start:" >&2; cat "$TMP/ours.err" >&2; exit 1; }

# --- Kamailio: transaction-stateful 480, one UDP worker ---
KAM_PORT=$(port)
mkdir -p "$TMP/kam"
cat >"$TMP/kam/kamailio.cfg" <<EOF
#!KAMAILIO
debug=0
log_stderror=yes
fork=yes
children=1
auto_aliases=no
dns=no
rev_dns=no
listen=udp:127.0.0.1:$KAM_PORT
mpath="$KAM_MODULES/"
loadmodule "tm.so"
loadmodule "sl.so"
request_route {
	if (!t_newtran()) {
		sl_reply_error();
		exit;
	}
	t_reply("480", "Temporarily Unavailable");
	exit;
}
EOF
kamailio -c -f "$TMP/kam/kamailio.cfg" >"$TMP/kam/check.log" 2>&1 || { cat "$TMP/kam/check.log" >&2; exit 1; }
taskset -c "$SRV_CPU" kamailio -f "$TMP/kam/kamailio.cfg" -m "$KAM_SHM_MB" -D -E -P "$TMP/kam/kamailio.pid" -Y "$TMP/kam" -w "$TMP/kam" \
  >"$TMP/kam/kamailio.log" 2>&1 &
KAM_PID=$!; pids+=("$KAM_PID")
KAM_HEX=$(printf '0100007F:%04X' "$KAM_PORT")
for _ in $(seq 100); do grep -q " $KAM_HEX " /proc/net/udp && break; sleep 0.1; done
sleep 0.5
KAM_PIDS=("$KAM_PID")
mapfile -t kids < <(pgrep -P "$KAM_PID")
KAM_PIDS+=("${kids[@]}")
[ "${#KAM_PIDS[@]}" -gt 1 ] || { echo "kamailio did not start:" >&2; cat "$TMP/kam/kamailio.log" >&2; exit 1; }

# run_sipp NAME TARGET RATE CALLS -> "sent r480 r503 timeouts unexpected retrans elapsed_s sipp_cpu_s failed late"
# (late: responses that came after their call had failed, SIPp's DeadCallMsgs)
run_sipp() {
  local d="$TMP/$1" t0=0 t1=0
  mkdir -p "$d"
  (cd "$d" && exec taskset -c "$LOAD_CPU" sipp -sf "$SCENARIO" -s nobody "$2" -i 127.0.0.1 -t u1 -r "$3" -rp 1000 -m "$4" \
     -l 1000000 -nostdin -timeout $(( $4 / $3 + 40 ))s -trace_stat -stf stat.csv -fd 1 -trace_counts >sipp.out 2>sipp.err) &
  local sp=$!
  sleep 0.05
  local spp; spp=$(pgrep -P "$sp" -x sipp || echo "$sp")
  t0=$(ticks "$spp" 2>/dev/null || echo 0)
  while kill -0 "$spp" 2>/dev/null; do t1=$(ticks "$spp" 2>/dev/null || echo "$t1"); sleep 0.2; done
  wait "$sp" || true
  python3 - "$d" "${t0:-0}" "${t1:-0}" "$HZ" <<'EOF'
import sys, glob
d, t0, t1, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
stat = [l.split(";") for l in open(d + "/stat.csv").read().splitlines() if l.strip()]
h, last = stat[0], stat[-1]
g = lambda k: int(last[h.index(k)])
counts = [l.split(";") for l in open(glob.glob(d + "/*_counts.csv")[0]).read().splitlines() if l.strip()]
ch, cl = counts[0], counts[-1]
c = lambda k: int(cl[ch.index(k)])
timeouts = g("FailedTimeoutOnRecv(C)") + g("FailedMaxUDPRetrans(C)")
# SIPp's own clock: from its start to its last statistics line (process start-up excluded).
epoch = lambda k: float(last[h.index(k)].split("\t")[-1])
print(c("0_OPTIONS_Sent"), c("2_480_Recv"), c("1_503_Recv"), timeouts, g("FailedUnexpectedMessage(C)"),
      c("0_OPTIONS_Retrans"), "%.2f" % (epoch("CurrentTime") - epoch("StartTime")), "%.2f" % ((t1 - t0) / hz), g("FailedCall(C)"),
      g("DeadCallMsgs(C)"))
EOF
}

# measure NAME TARGET RATE PIDS... -> run_sipp's line + "server_cpu_s"
measure() {
  local name=$1 target=$2 rate=$3; shift 3
  local c0 c1 out
  c0=$(ticks "$@")
  out=$(run_sipp "$name" "$target" "$rate" $((rate * SECS)))
  sleep "$SETTLE"
  c1=$(ticks "$@")
  echo "$out $(python3 -c "print('%.2f' % (($c1-$c0)/$HZ))")"
}

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); SIPp $(sipp -v 2>/dev/null | grep -o 'v[0-9.]*' | head -1), $(kamailio -v | head -1)"
echo
echo "| offered req/s | server | answered 480/s | 503 | failed (timeout / unexpected) | SIPp retrans | server CPU-ms per 1000 req | req per CPU-s | SIPp CPU-s / wall-s | our VmRSS after + $SETTLE s |"
echo "|---|---|---|---|---|---|---|---|---|---|"
best_ours=0
declare -A per_cpu
for rate in $RATES; do
  for srv in kamailio ours; do
    if [ "$srv" = ours ]; then
      r503_0=$(refused)
      read -r sent a480 a503 tmo unexp retr el scpu failed _late cpu < <(measure "ours_$rate" "$OURS" "$rate" "$OURS_PID")
      m503=$(( $(refused) - r503_0 ))
      label="mediasec cscf"; rss="$(rss_kb "$OURS_PID") kB"
    else
      read -r sent a480 a503 tmo unexp retr el scpu failed _late cpu < <(measure "kam_$rate" "127.0.0.1:$KAM_PORT" "$rate" "${KAM_PIDS[@]}")
      m503=$a503
      label="Kamailio"; rss="—"
    fi
    read -r ans per1k rps < <(python3 -c "a=$a480+$a503;print('%d' % ($a480/$el), '%.1f' % (1e6*$cpu/a) if a else 'n/a', '%d' % (a/$cpu) if $cpu else 'n/a')")
    per_cpu["$srv,$rate"]=$rps
    if [ "$srv" = ours ] && [ "$failed" -eq 0 ] && [ "$rps" != n/a ] && [ "$rps" -gt "$best_ours" ]; then best_ours=$rps; fi
    echo "| $rate | $label | $ans | $m503 | $failed ($tmo / $unexp) | $retr | $per1k | $rps | $scpu / $el | $rss |"
  done
  echo "| $rate | **ratio ours/Kamailio (req per CPU-s)** | | | | | | **$(python3 -c "k='${per_cpu[kamailio,$rate]}';o='${per_cpu[ours,$rate]}';print('%.2f×' % (int(o)/int(k)) if k.isdigit() and o.isdigit() else 'n/a')")** | | |"
done

# --- overload: offered OVERLOAD_X × our capacity; ours twice (does memory keep growing?), then Kamailio ---
[ -n "$OVERLOAD_RATE" ] || OVERLOAD_RATE=$(( best_ours * OVERLOAD_X / 1000 * 1000 ))
[ "$OVERLOAD_RATE" -gt 0 ] || { echo "no overload rate (set OVERLOAD_RATE)" >&2; exit 1; }
calls=$((OVERLOAD_RATE * SECS))
pct() { python3 -c "print('%d (%.1f %%)' % ($1, 100*$1/$calls))"; }
echo
echo "Overload: offered $OVERLOAD_RATE req/s for $SECS s ($OVERLOAD_X × the best req per CPU-s of ours above, $best_ours) = $calls calls per run."
echo
echo "| run | SIPp sent (+ retrans) in s | answered 480 | refused 503 (SIPp / our metric) | failed: timeout (late answers) | failed: unexpected | kernel drops: server socket / elsewhere (SIPp's) | requests the proxy took (metric) | server CPU-s | SIPp CPU-s | VmRSS before → after → $SETTLE s later (VmHWM) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
# overload NAME TARGET PORT PIDS...: one row.
overload() {
  local name=$1 target=$2 port=$3; shift 3
  local ours=0 rss0 rss1 rss2 drop0 drop1 all0 all1 req0=0 req1=0 r0=0 r1=0 c0 c1 mem
  [ "$1" = "$OURS_PID" ] && ours=1
  drop0=$(udp_drops "$1" "$port"); all0=$(rcvbuf_errors); c0=$(ticks "$@")
  if [ "$ours" = 1 ]; then rss0=$(rss_kb "$1"); req0=$(metric mediasec_cscf_requests_total); r0=$(refused); fi
  read -r sent a480 a503 tmo unexp retr el scpu failed late < <(run_sipp "$name" "$target" "$OVERLOAD_RATE" "$calls")
  drop1=$(udp_drops "$1" "$port"); all1=$(rcvbuf_errors); c1=$(ticks "$@")
  if [ "$ours" = 1 ]; then rss1=$(rss_kb "$1"); req1=$(metric mediasec_cscf_requests_total); r1=$(refused); fi
  sleep "$SETTLE"
  if [ "$ours" = 1 ]; then
    rss2=$(rss_kb "$1")
    mem="${rss0} → ${rss1} → ${rss2} kB ($(hwm_kb "$1") kB)"
    echo "| $name | $sent (+$retr) in $el | $(pct "$a480") | $(pct "$a503") / $((r1 - r0)) | $(pct "$tmo") ($late) | $(pct "$unexp") | $((drop1 - drop0)) / $((all1 - all0 - drop1 + drop0)) | $((req1 - req0)) | $(python3 -c "print('%.2f' % (($c1-$c0)/$HZ))") | $scpu | $mem |"
  else
    echo "| $name | $sent (+$retr) in $el | $(pct "$a480") | $(pct "$a503") | $(pct "$tmo") ($late) | $(pct "$unexp") | $((drop1 - drop0)) / $((all1 - all0 - drop1 + drop0)) | — | $(python3 -c "print('%.2f' % (($c1-$c0)/$HZ))") | $scpu | — |"
  fi
}
overload "mediasec cscf, 1st" "$OURS" "${OURS##*:}" "$OURS_PID"
overload "mediasec cscf, 2nd" "$OURS" "${OURS##*:}" "$OURS_PID"
overload "Kamailio" "127.0.0.1:$KAM_PORT" "$KAM_PORT" "${KAM_PIDS[@]}"
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
