/*
 * harness.h - what the wolfSSL peer harnesses (eccsi_wolfssl.c, sakke_wolfssl.c) share:
 * CHECK (exit 1 with the failing call on stderr) and hex input. Include after the wolfSSL
 * headers (it uses byte and word32).
 */
#ifndef MEDIASEC_PEER_HARNESS_H
#define MEDIASEC_PEER_HARNESS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(x)                                                                 \
    do {                                                                         \
        int rc_ = (x);                                                           \
        if (rc_ != 0) {                                                          \
            fprintf(stderr, "%s:%d %s -> %d\n", __FILE__, __LINE__, #x, rc_);    \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

static byte *unhex(const char *s, word32 *len)
{
    size_t n = strlen(s);
    if (n % 2) {
        fprintf(stderr, "odd hex length\n");
        exit(1);
    }
    byte *out = malloc(n / 2 + 1);
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) {
            fprintf(stderr, "bad hex\n");
            exit(1);
        }
        out[i] = (byte)v;
    }
    *len = (word32)(n / 2);
    return out;
}

#endif
