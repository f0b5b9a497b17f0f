#!/usr/bin/env bash
# Builds tests/interop/libsrtp_peer.c against the OpenSSL-backed libsrtp 2.7 inside the PyPI
# wheel `pylibsrtp` (headers from Debian's libsrtp2-dev) and prints the binary's path.
# Needs: pip install pylibsrtp==1.0.0 ; apt-get install libsrtp2-dev
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-${TMPDIR:-/tmp}/mediasec-libsrtp-peer}
so=$(python3 -c 'import pylibsrtp._binding as b; print(b.__file__)')
pylib=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
pyver=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if [ ! -x "$out" ] || [ "$here/libsrtp_peer.c" -nt "$out" ]; then
  cc -O2 -Wall -o "$out.tmp" "$here/libsrtp_peer.c" "$so" \
     -L"$pylib" -lpython"$pyver" -Wl,-rpath,"$(dirname "$so")":"$pylib"
  mv "$out.tmp" "$out"
fi
echo "$out"
