/*
 * libsrtp_peer.c - drives libsrtp (2.x) as an independent SRTP peer for mediasec's interop
 * tests. Our own code; built by build_libsrtp_peer.sh against Debian's libsrtp2 headers and
 * the OpenSSL-backed libsrtp 2.7 inside the PyPI wheel `pylibsrtp`.
 *
 * usage: libsrtp_peer protect|unprotect rtp|rtcp SUITE KEY_HEX MKI_HEX|- WINDOW [ROC]
 *   stdin : frames  [u32 big-endian length][packet]
 *   stdout: results [i32 big-endian libsrtp status][u32 length][packet]
 * One session per process, ssrc_any_outbound (protect) or ssrc_any_inbound (unprotect).
 * With ROC given, the stream of the first packet's SSRC gets that ROC (srtp_set_stream_roc).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <srtp2/srtp.h>

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static size_t unhex(const char *s, uint8_t *out, size_t max)
{
    size_t n = strlen(s) / 2;
    if (n > max) { fprintf(stderr, "hex too long\n"); exit(2); }
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0) { fprintf(stderr, "bad hex\n"); exit(2); }
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return n;
}

/* Sets the crypto policies for an IANA SDES suite name. */
static int set_suite(const char *suite, srtp_crypto_policy_t *rtp, srtp_crypto_policy_t *rtcp)
{
    if (!strcmp(suite, "AES_CM_128_HMAC_SHA1_80")) {
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(rtp);
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(rtcp);
    } else if (!strcmp(suite, "AES_CM_128_HMAC_SHA1_32")) {
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32(rtp);
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(rtcp);
    } else if (!strcmp(suite, "AES_192_CM_HMAC_SHA1_80")) {
        srtp_crypto_policy_set_aes_cm_192_hmac_sha1_80(rtp);
        srtp_crypto_policy_set_aes_cm_192_hmac_sha1_80(rtcp);
    } else if (!strcmp(suite, "AES_192_CM_HMAC_SHA1_32")) {
        srtp_crypto_policy_set_aes_cm_192_hmac_sha1_32(rtp);
        srtp_crypto_policy_set_aes_cm_192_hmac_sha1_80(rtcp);
    } else if (!strcmp(suite, "AES_256_CM_HMAC_SHA1_80")) {
        srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80(rtp);
        srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80(rtcp);
    } else if (!strcmp(suite, "AES_256_CM_HMAC_SHA1_32")) {
        srtp_crypto_policy_set_aes_cm_256_hmac_sha1_32(rtp);
        srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80(rtcp);
    } else if (!strcmp(suite, "AEAD_AES_128_GCM")) {
        srtp_crypto_policy_set_aes_gcm_128_16_auth(rtp);
        srtp_crypto_policy_set_aes_gcm_128_16_auth(rtcp);
    } else if (!strcmp(suite, "AEAD_AES_256_GCM")) {
        srtp_crypto_policy_set_aes_gcm_256_16_auth(rtp);
        srtp_crypto_policy_set_aes_gcm_256_16_auth(rtcp);
    } else if (!strcmp(suite, "NULL_HMAC_SHA1_80") || !strcmp(suite, "NULL_HMAC_SHA1_32")) {
        srtp_crypto_policy_set_null_cipher_hmac_sha1_80(rtp);
        srtp_crypto_policy_set_null_cipher_hmac_sha1_80(rtcp);
        if (!strcmp(suite, "NULL_HMAC_SHA1_32")) rtp->auth_tag_len = 4;
    } else {
        return -1;
    }
    return 0;
}

static int read_exact(uint8_t *p, size_t n)
{
    return fread(p, 1, n, stdin) == n ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc < 7) {
        fprintf(stderr, "usage: %s protect|unprotect rtp|rtcp SUITE KEY_HEX MKI_HEX|- WINDOW [ROC]\n", argv[0]);
        return 2;
    }
    int protect = !strcmp(argv[1], "protect");
    int rtcp = !strcmp(argv[2], "rtcp");
    static uint8_t key[64], mki[256];
    unhex(argv[4], key, sizeof key);
    size_t mki_len = strcmp(argv[5], "-") ? unhex(argv[5], mki, sizeof mki) : 0;
    long roc = argc > 7 ? atol(argv[7]) : -1;

    srtp_policy_t policy;
    memset(&policy, 0, sizeof policy);
    if (set_suite(argv[3], &policy.rtp, &policy.rtcp)) {
        fprintf(stderr, "unknown suite %s\n", argv[3]);
        return 2;
    }
    srtp_master_key_t master = { key, mki, (unsigned int)mki_len };
    srtp_master_key_t *masters[1] = { &master };
    if (mki_len) {
        policy.keys = masters;
        policy.num_master_keys = 1;
    } else {
        policy.key = key;
    }
    policy.ssrc.type = protect ? ssrc_any_outbound : ssrc_any_inbound;
    policy.window_size = strtoul(argv[6], NULL, 10);
    if (srtp_init() != srtp_err_status_ok) return 3;
    srtp_t session;
    srtp_err_status_t st = srtp_create(&session, &policy);
    if (st != srtp_err_status_ok) {
        fprintf(stderr, "srtp_create: %d\n", (int)st);
        return 3;
    }

    static uint8_t buf[65536 + 256];
    uint8_t hdr[4];
    int first = 1;
    while (read_exact(hdr, 4) == 0) {
        uint32_t n = (uint32_t)hdr[0] << 24 | hdr[1] << 16 | hdr[2] << 8 | hdr[3];
        if (n > 65536 || read_exact(buf, n)) return 4;
        int len = (int)n;
        if (first && roc >= 0 && len >= 12) {
            uint32_t ssrc = (uint32_t)buf[8] << 24 | buf[9] << 16 | buf[10] << 8 | buf[11];
            /* the stream exists only after a first packet has been processed for it */
            if (!protect) {
                srtp_policy_t one = policy;
                one.ssrc.type = ssrc_specific;
                one.ssrc.value = ssrc;
                srtp_add_stream(session, &one);
            }
            (void)srtp_set_stream_roc(session, ssrc, (uint32_t)roc);
        }
        first = 0;
        if (protect)
            st = rtcp ? srtp_protect_rtcp_mki(session, buf, &len, mki_len != 0, 0)
                      : srtp_protect_mki(session, buf, &len, mki_len != 0, 0);
        else
            st = rtcp ? srtp_unprotect_rtcp_mki(session, buf, &len, mki_len != 0)
                      : srtp_unprotect_mki(session, buf, &len, mki_len != 0);
        uint8_t out[8];
        int32_t s = (int32_t)st;
        uint32_t l = st == srtp_err_status_ok ? (uint32_t)len : 0;
        for (int i = 0; i < 4; i++) {
            out[i] = (uint8_t)((uint32_t)s >> (24 - 8 * i));
            out[4 + i] = (uint8_t)(l >> (24 - 8 * i));
        }
        fwrite(out, 1, 8, stdout);
        fwrite(buf, 1, l, stdout);
    }
    fflush(stdout);
    srtp_dealloc(session);
    return 0;
}
