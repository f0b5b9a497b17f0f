#!/usr/bin/env python3
"""One SDES SRTP<->RTP call through an ng-controlled media relay (rtpengine or mediasec agw).

usage: sdes_call.py NG_PORT SUITE[,SUITE...] [SDES_FLAG...]

The UE (SRTP, keys from pylibsrtp's side) offers one a=crypto line per suite (tags 1..n),
asks for RTP/AVP towards the core, the core answers plain RTP. Then N packets go each way:
UE --SRTP--> relay --RTP--> core (payload must arrive intact) and core --RTP--> relay
--SRTP--> UE (libsrtp must authenticate and decrypt it with the relay's answered key).
Prints one JSON object. Our code, written for mediasec's interop tests.
"""
import base64
import json
import os
import re
import socket
import struct
import sys

from pylibsrtp import Policy, Session

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30),
    "AES_CM_128_HMAC_SHA1_32": (Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 30),
    "AEAD_AES_128_GCM": (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28),
    "AEAD_AES_256_GCM": (Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44),
}
PACKETS = 40


def enc(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return str(len(v)).encode() + b":" + v
    if isinstance(v, list):
        return b"l" + b"".join(map(enc, v)) + b"e"
    return b"d" + b"".join(enc(k) + enc(v[k]) for k in sorted(v)) + b"e"


def dec(b, i):
    t = b[i:i + 1]
    if t == b"i":
        e = b.index(b"e", i)
        return int(b[i + 1:e]), e + 1
    if t in (b"l", b"d"):
        items, i = [], i + 1
        while b[i:i + 1] != b"e":
            x, i = dec(b, i)
            items.append(x)
        if t == b"l":
            return items, i + 1
        return {items[k].decode(): items[k + 1] for k in range(0, len(items), 2)}, i + 1
    c = b.index(b":", i)
    n = int(b[i:c])
    return b[c + 1:c + 1 + n], c + 1 + n


def ng(port, msg):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    cookie = os.urandom(6).hex().encode()
    s.sendto(cookie + b" " + enc(msg), ("127.0.0.1", port))
    while True:
        data = s.recv(65535)
        if data.startswith(cookie + b" "):
            reply, _ = dec(data, len(cookie) + 1)
            if reply.get("result") != b"ok":
                raise SystemExit(json.dumps({"error": reply.get("error-reason", b"?").decode()}))
            return reply


def body(port, proto, lines=()):
    sdp = ["v=0", "o=- 7 7 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
           f"m=audio {port} {proto} 0", "a=rtpmap:0 PCMU/8000", *lines, "a=sendrecv"]
    return "\r\n".join(sdp) + "\r\n"


def main():
    ng_port, suites, flags = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3:]
    ue, core = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (ue, core):
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)
    keys = {}
    lines = []
    for tag, name in enumerate(suites, 1):
        keys[tag] = os.urandom(PROFILES[name][1])
        lines.append(f"a=crypto:{tag} {name} inline:{base64.b64encode(keys[tag]).decode()}")
    call = "interop-" + os.urandom(4).hex()
    offer = {"command": "offer", "call-id": call, "from-tag": "ue", "transport-protocol": "RTP/AVP",
             "sdp": body(ue.getsockname()[1], "RTP/SAVP", lines)}
    if flags:
        offer["SDES"] = flags
    to_core = ng(ng_port, offer)["sdp"].decode()
    to_ue = ng(ng_port, {"command": "answer", "call-id": call, "from-tag": "ue", "to-tag": "core",
                         "sdp": body(core.getsockname()[1], "RTP/AVP")})["sdp"].decode()
    relay_core = int(re.search(r"m=audio (\d+) RTP/AVP", to_core).group(1))
    relay_ue = int(re.search(r"m=audio (\d+) RTP/SAVP", to_ue).group(1))
    answered = re.findall(r"a=crypto:(\d+) (\S+) inline:([A-Za-z0-9+/=]+)", to_ue)
    tag, suite, b64 = answered[0]
    relay_key = base64.b64decode(b64 + "=" * (-len(b64) % 4))
    profile = PROFILES[suite][0]
    tx = Session(Policy(key=keys[int(tag)], ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
    rx = Session(Policy(key=relay_key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
    up = down = 0
    for i in range(PACKETS):
        payload = os.urandom(160)
        plain = struct.pack("!BBHII", 0x80, 0, 100 + i, 160 * i, 0xA1A1A1A1) + payload
        ue.sendto(tx.protect(plain), ("127.0.0.1", relay_ue))
        got = core.recv(2048)
        up += got == plain
        plain2 = struct.pack("!BBHII", 0x80, 0, 900 + i, 160 * i, 0xB2B2B2B2) + payload
        core.sendto(plain2, ("127.0.0.1", relay_core))
        down += rx.unprotect(ue.recv(2048)) == plain2
    ng(ng_port, {"command": "delete", "call-id": call, "from-tag": "ue"})
    print(json.dumps({"crypto_lines": len(answered), "tag": int(tag), "suite": suite, "key_len": len(relay_key),
                      "inline_len": len(b64), "padded": len(b64) % 4 == 0, "core_has_crypto": "a=crypto" in to_core,
                      "packets": PACKETS, "up_ok": up, "down_ok": down}))


if __name__ == "__main__":
    main()
