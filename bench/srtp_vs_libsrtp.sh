#!/usr/bin/env bash
# SRTP throughput and instruction counts: mediasec vs libsrtp 2.7 + OpenSSL (the copy inside
# the PyPI wheel pylibsrtp), measured in the same run on the same core. Writes a markdown
# table to stdout. Needs: pip install pylibsrtp==1.0.0; apt-get install libsrtp2-dev valgrind.
#   bench/srtp_vs_libsrtp.sh            # wall clock, best of 5 per case
#   CALLGRIND=1 bench/srtp_vs_libsrtp.sh  # plus instructions per packet (deterministic)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-${TMPDIR:-/tmp}/mediasec-bench}
mkdir -p "$out"
so=$(python3 -c 'import pylibsrtp._binding as b; print(b.__file__)')
pylib=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
pyver=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
cc -O2 -g -Wall -o "$out/libsrtp_bench" "$root/bench/libsrtp_bench.c" "$so" \
   -L"$pylib" -lpython"$pyver" -Wl,-rpath,"$(dirname "$so")":"$pylib"
(cd "$root" && cargo build --release -q -p mediasec)
ours="$root/target/release/mediasec"
pin="taskset -c 0"
command -v taskset >/dev/null || pin=""

echo "| suite | payload | libsrtp protect pkt/s | mediasec protect pkt/s | ratio | libsrtp unprotect pkt/s | mediasec unprotect pkt/s | ratio |"
echo "|---|---|---|---|---|---|---|---|"
for suite in AES_CM_128_HMAC_SHA1_80 AES_CM_128_HMAC_SHA1_32 AEAD_AES_128_GCM AES_256_CM_HMAC_SHA1_80 AEAD_AES_256_GCM; do
  for size in 160 1200; do
    read -r lp lu < <($pin "$out/libsrtp_bench" libsrtp "$suite" "$size" | awk -v s="$suite" '$2==s {print $4, $6}')
    json=$($pin "$ours" bench srtp --suite "$suite" --size "$size" --json --packets 300000)
    op=$(python3 -c "import json,sys; print(int(json.loads(sys.argv[1])['protect_pps']))" "$json")
    ou=$(python3 -c "import json,sys; print(int(json.loads(sys.argv[1])['unprotect_pps']))" "$json")
    printf "| %s | %s | %.0f | %s | %.2f | %.0f | %s | %.2f |\n" "$suite" "$size" "$lp" "$op" \
      "$(python3 -c "print($op/$lp)")" "$lu" "$ou" "$(python3 -c "print($ou/$lu)")"
  done
done

if [ "${CALLGRIND:-0}" = 1 ]; then
  n=4096
  echo
  echo "| suite | payload | libsrtp instr/protect | mediasec instr/protect | ratio | libsrtp instr/unprotect | mediasec instr/unprotect | ratio |"
  echo "|---|---|---|---|---|---|---|---|"
  for suite in AES_CM_128_HMAC_SHA1_80 AEAD_AES_128_GCM; do
    for size in 160 1200; do
      f="$out/cg.libsrtp.$suite.$size"
      SRTP_BENCH_PACKETS=$n valgrind --tool=callgrind --callgrind-out-file="$f" "$out/libsrtp_bench" libsrtp "$suite" "$size" >/dev/null 2>&1
      lp=$(callgrind_annotate --inclusive=yes "$f" | grep -E ' srtp_protect \[|:srtp_protect \[' | head -1 | awk '{gsub(",","",$1);print $1}')
      lu=$(callgrind_annotate --inclusive=yes "$f" | grep -E ' srtp_unprotect \[|:srtp_unprotect \[' | head -1 | awk '{gsub(",","",$1);print $1}')
      g="$out/cg.mediasec.$suite.$size"
      valgrind --tool=callgrind --callgrind-out-file="$g" "$ours" bench srtp --suite "$suite" --size "$size" --packets $n --reps 1 >/dev/null 2>&1
      op=$(callgrind_annotate --inclusive=yes "$g" | grep -E 'Session::protect_rtp ' | head -1 | awk '{gsub(",","",$1);print $1}')
      ou=$(callgrind_annotate --inclusive=yes "$g" | grep -E 'Session::unprotect_rtp ' | head -1 | awk '{gsub(",","",$1);print $1}')
      printf "| %s | %s | %d | %d | %.2f | %d | %d | %.2f |\n" "$suite" "$size" $((lp / n)) $((op / n)) \
        "$(python3 -c "print($op/$lp)")" $((lu / n)) $((ou / n)) "$(python3 -c "print($ou/$lu)")"
    done
  done
fi
