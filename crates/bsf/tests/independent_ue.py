#!/usr/bin/env python3
"""An independent GBA_ME UE written only from TS 24.109 / RFC 3310 / RFC 2617 / TS 33.220 B.3.

USIM: osmo-auc-gen (libosmocore MILENAGE) gives RES/CK/IK for the RAND of the nonce, and the
AUTN it would build for the SQN we recover is compared with the BSF's AUTN (network
authentication). Digest, XML and Ks_NAF are computed here with the Python standard library.
usage: independent_ue.py HOST:PORT IMPI REALM K OPC NAF_FQDN UA_ID_HEX
prints: B-TID and Ks_NAF (hex), one per line."""
import base64, hashlib, hmac, http.client, os, re, subprocess, sys

host, impi, realm, k, opc, naf_fqdn, ua_id = sys.argv[1:8]

def md5(b):
    return hashlib.md5(b).hexdigest()

def osmo(rand_hex, sqn):
    out = subprocess.run(["osmo-auc-gen", "-3", "-a", "milenage", "-k", k, "-o", opc, "-r", rand_hex,
                          "-s", str(sqn), "-f", "8000"], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"^([A-Za-z ]+):\t(\S+)", out, re.M))

def params(value):
    return {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
            for m in re.finditer(r'([A-Za-z-]+)=(?:"([^"]*)"|([^\s,]+))', value)}

def get(auth):
    c = http.client.HTTPConnection(host)
    c.request("GET", "/", headers={"Authorization": auth, "User-Agent": "indep-ue 3gpp-gba"})
    r = c.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()

status, hdrs, _ = get(f'Digest username="{impi}", realm="{realm}", nonce="", uri="/", response=""')
assert status == 401, status
ch = params(hdrs["www-authenticate"].split(" ", 1)[1])
assert ch["algorithm"] == "AKAv1-MD5" and "auth-int" in ch["qop"].split(","), ch
raw = base64.b64decode(ch["nonce"])
rand, autn = raw[:16], raw[16:32]
v0 = osmo(rand.hex(), 0)
res, ck, ik = bytes.fromhex(v0["RES"]), bytes.fromhex(v0["CK"]), bytes.fromhex(v0["IK"])
# Network authentication: AK = AUTN(SQN=0)[0..6] (SQN 0 xor AK), SQN = AUTN[0..6] xor AK;
# osmo-auc-gen must then rebuild exactly the BSF's AUTN (MAC-A = f1(SQN, RAND, AMF)).
ak = bytes.fromhex(v0["AUTN"])[:6]
sqn = int.from_bytes(bytes(a ^ b for a, b in zip(autn[:6], ak)), "big")
assert bytes.fromhex(osmo(rand.hex(), sqn)["AUTN"]) == autn, "AUTN does not verify"
cnonce, nc, qop, uri = os.urandom(8).hex(), "00000001", "auth-int", "/"
ha1 = md5(f"{impi}:{realm}:".encode() + res)
ha2 = md5(f"GET:{uri}:{md5(b'')}".encode())
response = md5(f"{ha1}:{ch['nonce']}:{nc}:{cnonce}:{qop}:{ha2}".encode())
status, hdrs, body = get(f'Digest username="{impi}", realm="{realm}", nonce="{ch["nonce"]}", uri="{uri}", '
                         f'qop={qop}, nc={nc}, cnonce="{cnonce}", response="{response}", '
                         f'opaque="{ch["opaque"]}", algorithm=AKAv1-MD5')
assert status == 200, (status, body)
info = params(hdrs["authentication-info"])
rsp_ha2 = md5(f":{uri}:{md5(body)}".encode())
assert info["rspauth"] == md5(f"{ha1}:{ch['nonce']}:{nc}:{cnonce}:{qop}:{rsp_ha2}".encode()), "rspauth"
btid = re.search(r"<btid>([^<]+)</btid>", body.decode()).group(1)
assert btid.split("@")[0] == base64.b64encode(rand).decode()
naf_id = naf_fqdn.encode() + bytes.fromhex(ua_id)
s = b"\x01"
for p in (b"gba-me", rand, impi.encode(), naf_id):
    s += p + len(p).to_bytes(2, "big")
print(btid)
print(hmac.new(ck + ik, s, hashlib.sha256).hexdigest())
