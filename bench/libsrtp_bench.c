/*
 * srtp_bench.c - single-core throughput of libsrtp2 srtp_protect / srtp_unprotect.
 *
 * Own code (the project's anchor measurement), run by bench/srtp_vs_libsrtp.sh.
 * Build against Debian's libsrtp2 (NSS backend):
 *     cc -O2 -o srtp_bench srtp_bench.c $(pkg-config --cflags --libs libsrtp2)
 * The same source also links against any other shared object that exports
 * the libsrtp2 API (e.g. the OpenSSL-backed copy inside the pylibsrtp wheel),
 * see run.sh.
 *
 * Method: packets are processed in batches of BATCH packets held in one
 * buffer (fits in L2).  Building the plaintext batch (memcpy + seq number)
 * is outside the timed region; only the srtp_protect() calls over the batch
 * and then the srtp_unprotect() calls over the same batch are timed.
 * Sequence numbers increase monotonically across batches (so ROC rolls
 * over normally and the replay window never rejects), one SSRC, one
 * sender session and one receiver session.  Each (profile, size) case runs
 * for ~TARGET_NS per repetition, REPS repetitions, best repetition reported.
 * Every unprotected packet is compared against its plaintext.
 *
 * Fixed-count mode for instruction counting: SRTP_BENCH_PACKETS=N runs each
 * case once for exactly N packets (rounded up to BATCH), e.g.
 *     SRTP_BENCH_PACKETS=8192 valgrind --tool=callgrind ./srtp_bench LABEL PROFILE SIZE
 *     callgrind_annotate --inclusive=yes callgrind.out.* | grep srtp_
 * gives deterministic instructions per srtp_protect / srtp_unprotect call.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <srtp2/srtp.h>

#define BATCH 512
#define SLOT 1536
#define REPS 5
#define TARGET_NS 400000000ull /* 0.4 s per repetition */

typedef void (*policy_fn)(srtp_crypto_policy_t *);

struct profile {
    const char *name;
    policy_fn rtp;
    policy_fn rtcp;
};

/* srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80 is a macro over this one */
static const struct profile profiles[] = {
    { "AES_CM_128_HMAC_SHA1_80", srtp_crypto_policy_set_rtp_default,
      srtp_crypto_policy_set_rtp_default },
    { "AES_CM_128_HMAC_SHA1_32", srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32,
      srtp_crypto_policy_set_rtp_default },
    { "AEAD_AES_128_GCM", srtp_crypto_policy_set_aes_gcm_128_16_auth,
      srtp_crypto_policy_set_aes_gcm_128_16_auth },
    { "AES_256_CM_HMAC_SHA1_80", srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80,
      srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80 },
    { "AEAD_AES_256_GCM", srtp_crypto_policy_set_aes_gcm_256_16_auth,
      srtp_crypto_policy_set_aes_gcm_256_16_auth },
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void make_rtp(uint8_t *p, uint16_t seq, uint32_t ts, uint32_t ssrc,
                     const uint8_t *payload, int plen)
{
    p[0] = 0x80; /* V=2 */
    p[1] = 0x00; /* PT=0 (PCMU) */
    p[2] = (uint8_t)(seq >> 8);
    p[3] = (uint8_t)seq;
    p[4] = (uint8_t)(ts >> 24);
    p[5] = (uint8_t)(ts >> 16);
    p[6] = (uint8_t)(ts >> 8);
    p[7] = (uint8_t)ts;
    p[8] = (uint8_t)(ssrc >> 24);
    p[9] = (uint8_t)(ssrc >> 16);
    p[10] = (uint8_t)(ssrc >> 8);
    p[11] = (uint8_t)ssrc;
    memcpy(p + 12, payload, (size_t)plen);
}

static int check(srtp_err_status_t st, const char *what)
{
    if (st != srtp_err_status_ok) {
        fprintf(stderr, "%s failed: %d\n", what, (int)st);
        return -1;
    }
    return 0;
}

static unsigned long fixed_packets; /* 0 = time-based */

static int run_case(const struct profile *pr, int plen, double *prot_pps,
                    double *unprot_pps)
{
    const uint32_t ssrc = 0xCAFEBABEu;
    uint8_t key[SRTP_MAX_KEY_LEN];
    uint8_t payload[SLOT];
    static uint8_t buf[BATCH][SLOT];
    static uint8_t ref[BATCH][SLOT];
    int len[BATCH];
    srtp_policy_t tx, rx;
    srtp_t stx = NULL, srx = NULL;
    uint16_t seq = 1000;
    uint32_t ts = 0;
    double best_p = 0, best_u = 0;

    for (size_t i = 0; i < sizeof key; i++)
        key[i] = (uint8_t)(rand() & 0xff);
    for (int i = 0; i < plen; i++)
        payload[i] = (uint8_t)(rand() & 0xff);

    memset(&tx, 0, sizeof tx);
    pr->rtp(&tx.rtp);
    pr->rtcp(&tx.rtcp);
    tx.ssrc.type = ssrc_specific;
    tx.ssrc.value = ssrc;
    tx.key = key;
    tx.window_size = 128;
    rx = tx;

    if (check(srtp_create(&stx, &tx), "srtp_create tx") ||
        check(srtp_create(&srx, &rx), "srtp_create rx"))
        return -1;

    for (int rep = 0; rep < (fixed_packets ? 1 : REPS); rep++) {
        uint64_t tp = 0, tu = 0, n = 0;
        while (fixed_packets ? n < fixed_packets : tp + tu < TARGET_NS) {
            for (int i = 0; i < BATCH; i++) {
                make_rtp(buf[i], seq, ts, ssrc, payload, plen);
                memcpy(ref[i], buf[i], (size_t)plen + 12);
                len[i] = plen + 12;
                seq++;
                ts += 160;
            }
            uint64_t t0 = now_ns();
            for (int i = 0; i < BATCH; i++) {
                if (srtp_protect(stx, buf[i], &len[i]) != srtp_err_status_ok) {
                    fprintf(stderr, "protect failed\n");
                    return -1;
                }
            }
            uint64_t t1 = now_ns();
            for (int i = 0; i < BATCH; i++) {
                if (srtp_unprotect(srx, buf[i], &len[i]) != srtp_err_status_ok) {
                    fprintf(stderr, "unprotect failed\n");
                    return -1;
                }
            }
            uint64_t t2 = now_ns();
            for (int i = 0; i < BATCH; i++) {
                if (len[i] != plen + 12 ||
                    memcmp(buf[i], ref[i], (size_t)plen + 12) != 0) {
                    fprintf(stderr, "round trip mismatch\n");
                    return -1;
                }
            }
            tp += t1 - t0;
            tu += t2 - t1;
            n += BATCH;
        }
        double p = (double)n * 1e9 / (double)tp;
        double u = (double)n * 1e9 / (double)tu;
        if (p > best_p)
            best_p = p;
        if (u > best_u)
            best_u = u;
    }
    srtp_dealloc(stx);
    srtp_dealloc(srx);
    *prot_pps = best_p;
    *unprot_pps = best_u;
    return 0;
}

int main(int argc, char **argv)
{
    const char *label = argc > 1 ? argv[1] : "libsrtp2";
    const char *only_profile = argc > 2 ? argv[2] : NULL; /* optional filter */
    int only_size = argc > 3 ? atoi(argv[3]) : 0;          /* optional filter */
    static const int sizes[] = { 160, 1200 };
    cpu_set_t set;

    CPU_ZERO(&set);
    CPU_SET(0, &set);
    sched_setaffinity(0, sizeof set, &set); /* one core */
    srand(12345);
    if (getenv("SRTP_BENCH_PACKETS"))
        fixed_packets = strtoul(getenv("SRTP_BENCH_PACKETS"), NULL, 10);

    if (check(srtp_init(), "srtp_init"))
        return 1;
    printf("# %s: %s\n", label, srtp_get_version_string());
    printf("# method: batches of %d, best of %d x %.1f s, single core, payload MB/s = 1e6 bytes of RTP payload\n",
           BATCH, REPS, TARGET_NS / 1e9);
    printf("%-10s %-24s %7s %12s %10s %12s %10s\n", "impl", "profile", "payload",
           "protect_pps", "prot_MB/s", "unprot_pps", "unpr_MB/s");
    for (size_t pi = 0; pi < sizeof profiles / sizeof profiles[0]; pi++) {
        for (size_t si = 0; si < 2; si++) {
            double p, u;
            int plen = sizes[si];
            if ((only_profile && strcmp(only_profile, profiles[pi].name) != 0) ||
                (only_size && only_size != plen))
                continue;
            if (run_case(&profiles[pi], plen, &p, &u)) {
                printf("%-10s %-24s %7d %12s\n", label, profiles[pi].name, plen,
                       "FAILED");
                continue;
            }
            printf("%-10s %-24s %7d %12.0f %10.1f %12.0f %10.1f\n", label,
                   profiles[pi].name, plen, p, p * plen / 1e6, u, u * plen / 1e6);
            fflush(stdout);
        }
    }
    srtp_shutdown();
    return 0;
}
