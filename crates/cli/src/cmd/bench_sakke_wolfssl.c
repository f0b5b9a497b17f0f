/*
 * bench_sakke_wolfssl.c - the wolfSSL side of `mediasec bench sakke`: times wolfSSL's SAKKE
 * (RFC 6508, parameter set 1) and ECCSI (RFC 6507, P-256) on the keys and data the Rust
 * side made, so both are measured in the same run on the same inputs. `mediasec bench
 * sakke` writes this file and harness.h to a temporary directory and builds it with
 *
 *     cc -O2 -o bench_sakke_wolfssl bench_sakke_wolfssl.c -lwolfssl
 *
 * Arguments (hex unless noted): ITERS Z ID RSK SSV DATA KPAK EID SSK PVT MSG
 *   Z, RSK: 0x04||x||y (257 octets); DATA = R||H (273) encapsulating SSV to ID under Z;
 *   KPAK, PVT: 0x04||x||y (65); SSK 32 octets; (SSK, PVT) issued to EID under KPAK.
 * Every operation is checked (encapsulation byte-identical to DATA, decapsulation gives
 * SSV back, the RSK validates, wolfSSL's signatures verify). Output, one line per
 * operation: "<name> <median microseconds> <precomputation used>". Exit 1 on any failure.
 */
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/sakke.h>
#include <wolfssl/wolfcrypt/eccsi.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <time.h>

#include "harness.h" /* CHECK and unhex, shared with the peer tests (crates/mikey/tests/peers) */

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
}

/* A length query (table NULL) answers LENGTH_ONLY_E with *len set; builds without
 * wolfSSL's SP 1024-bit code (Debian's 5.5.4) answer 0 octets: no table to use. */
static byte *point_i_table(SakkeKey *key, word32 *len)
{
    int rc = wc_GenerateSakkePointITable(key, NULL, len);
    if ((rc != LENGTH_ONLY_E && rc != 0) || *len == 0)
        return NULL;
    byte *t = malloc(*len);
    if (t == NULL || wc_GenerateSakkePointITable(key, t, len) != 0) {
        free(t);
        return NULL;
    }
    return t;
}

static byte *rsk_table(SakkeKey *key, ecc_point *rsk, word32 *len)
{
    int rc = wc_GenerateSakkeRskTable(key, rsk, NULL, len);
    if ((rc != LENGTH_ONLY_E && rc != 0) || *len == 0)
        return NULL;
    byte *t = malloc(*len);
    if (t == NULL || wc_GenerateSakkeRskTable(key, rsk, t, len) != 0) {
        free(t);
        return NULL;
    }
    return t;
}

static void sakke_key(SakkeKey *key, const byte *z)
{
    CHECK(wc_InitSakkeKey_ex(key, 128, ECC_SAKKE_1, NULL, INVALID_DEVID));
    CHECK(wc_ImportSakkePublicKey(key, z + 1, 256, 1));
}

int main(int argc, char **argv)
{
    if (argc != 12) {
        fprintf(stderr, "usage: %s ITERS Z ID RSK SSV DATA KPAK EID SSK PVT MSG\n", argv[0]);
        return 1;
    }
    int iters = atoi(argv[1]);
    word32 zSz, idSz, rskSz, ssvSz, dataSz, kpakSz, eidSz, sskSz, pvtSz, msgSz;
    byte *z = unhex(argv[2], &zSz), *id = unhex(argv[3], &idSz), *rskb = unhex(argv[4], &rskSz);
    byte *ssv = unhex(argv[5], &ssvSz), *data = unhex(argv[6], &dataSz);
    byte *kpak = unhex(argv[7], &kpakSz), *eid = unhex(argv[8], &eidSz), *sskb = unhex(argv[9], &sskSz);
    byte *pvtb = unhex(argv[10], &pvtSz), *msg = unhex(argv[11], &msgSz);
    if (iters < 1 || zSz != 257 || rskSz != 257 || ssvSz != 16 || dataSz != 273 || kpakSz != 65) {
        fprintf(stderr, "bad argument sizes\n");
        return 1;
    }
    double *t = malloc(sizeof(double) * (size_t)iters);
    SakkeKey key;
    ecc_point *rsk = wc_ecc_new_point();
    byte buf[16], auth[257];
    word16 authSz;
    int valid;

    /* RSK validation (RFC 6508 §6.1.2): once per received key, nothing to precompute. */
    sakke_key(&key, z);
    CHECK(wc_DecodeSakkeRsk(&key, rskb, rskSz, rsk));
    for (int i = 0; i < iters; i++) {
        double t0 = now_us();
        valid = 0;
        CHECK(wc_ValidateSakkeRsk(&key, id, (word16)idSz, rsk, &valid));
        t[i] = now_us() - t0;
        if (!valid) {
            fprintf(stderr, "wolfSSL: RSK does not validate\n");
            return 1;
        }
    }
    printf("rsk_validate %.1f none\n", median(t, iters));
    wc_FreeSakkeKey(&key);

    /* Encapsulation to an identity, with and without the point-I table. */
    for (int with_table = 0; with_table < 2; with_table++) {
        word32 len = 0;
        byte *table = NULL;
        sakke_key(&key, z);
        CHECK(wc_SetSakkeIdentity(&key, id, (word16)idSz));
        if (with_table) {
            CHECK(wc_MakeSakkePointI(&key, id, (word16)idSz));
            table = point_i_table(&key, &len);
            if (table != NULL)
                CHECK(wc_SetSakkePointITable(&key, table, len));
        }
        for (int i = 0; i < iters; i++) {
            memcpy(buf, ssv, 16);
            authSz = sizeof auth;
            double t0 = now_us();
            CHECK(wc_MakeSakkeEncapsulatedSSV(&key, WC_HASH_TYPE_SHA256, buf, 16, auth, &authSz));
            t[i] = now_us() - t0;
            if (authSz != 257 || memcmp(auth, data, 257) != 0 || memcmp(buf, data + 257, 16) != 0) {
                fprintf(stderr, "wolfSSL: encapsulation differs from ours\n");
                return 1;
            }
        }
        if (with_table)
            printf("encapsulate_cached %.1f %s\n", median(t, iters),
                   table ? "wc_MakeSakkePointI+wc_GenerateSakkePointITable" : "wc_MakeSakkePointI (point-I table: 0 octets in this build)");
        else
            printf("encapsulate %.1f none\n", median(t, iters));
        wc_FreeSakkeKey(&key);
        free(table);
    }

    /* Decapsulation (RFC 6508 §6.2.2, with wolfSSL's own R re-check), the receiver's key
     * set up once as a long-lived receiver would: RSK table and point-I table. */
    {
        word32 rlen = 0, ilen = 0;
        sakke_key(&key, z);
        byte *rtable = rsk_table(&key, rsk, &rlen);
        CHECK(wc_SetSakkeRsk(&key, rsk, rtable, rtable ? rlen : 0));
        CHECK(wc_SetSakkeIdentity(&key, id, (word16)idSz));
        CHECK(wc_MakeSakkePointI(&key, id, (word16)idSz));
        byte *itable = point_i_table(&key, &ilen);
        if (itable != NULL)
            CHECK(wc_SetSakkePointITable(&key, itable, ilen));
        for (int i = 0; i < iters; i++) {
            memcpy(buf, data + 257, 16);
            double t0 = now_us();
            CHECK(wc_DeriveSakkeSSV(&key, WC_HASH_TYPE_SHA256, buf, 16, data, 257));
            t[i] = now_us() - t0;
            if (memcmp(buf, ssv, 16) != 0) {
                fprintf(stderr, "wolfSSL: decapsulation gave another SSV\n");
                return 1;
            }
        }
        printf("decapsulate %.1f wc_SetSakkeRsk+wc_MakeSakkePointI%s%s\n", median(t, iters),
               rtable ? "+wc_GenerateSakkeRskTable" : " (RSK table: 0 octets in this build)",
               itable ? "+wc_GenerateSakkePointITable" : " (point-I table: 0 octets)");
        wc_FreeSakkeKey(&key);
        free(rtable);
        free(itable);
    }
    wc_ecc_del_point(rsk);

    /* ECCSI (RFC 6507): sign with the pair and HS set once; verify does what a receiver of
     * a signature must: PVT from the signature, HS, then the verification. */
    {
        EccsiKey ek;
        WC_RNG rng;
        mp_int ssk;
        ecc_point *pvt = wc_ecc_new_point(), *spvt = wc_ecc_new_point();
        byte hash[WC_MAX_DIGEST_SIZE], sig[256];
        byte hashSz = sizeof hash;
        word32 sigSz;
        int verified;

        CHECK(wc_InitEccsiKey(&ek, NULL, INVALID_DEVID));
        CHECK(wc_ImportEccsiPublicKey(&ek, kpak + 1, 64, 0));
        CHECK(mp_init(&ssk));
        CHECK(wc_DecodeEccsiSsk(&ek, sskb, sskSz, &ssk));
        CHECK(wc_DecodeEccsiPvt(&ek, pvtb, pvtSz, pvt));
        CHECK(wc_SetEccsiPair(&ek, &ssk, pvt));
        CHECK(wc_HashEccsiId(&ek, WC_HASH_TYPE_SHA256, eid, eidSz, pvt, hash, &hashSz));
        CHECK(wc_SetEccsiHash(&ek, hash, hashSz));
        CHECK(wc_InitRng(&rng));
        for (int i = 0; i < iters; i++) {
            sigSz = sizeof sig;
            double t0 = now_us();
            CHECK(wc_SignEccsiHash(&ek, &rng, WC_HASH_TYPE_SHA256, msg, msgSz, sig, &sigSz));
            t[i] = now_us() - t0;
        }
        printf("eccsi_sign %.1f wc_SetEccsiPair+wc_SetEccsiHash\n", median(t, iters));
        wc_FreeEccsiKey(&ek);

        CHECK(wc_InitEccsiKey(&ek, NULL, INVALID_DEVID));
        CHECK(wc_ImportEccsiPublicKey(&ek, kpak + 1, 64, 0));
        for (int i = 0; i < iters; i++) {
            hashSz = sizeof hash;
            verified = 0;
            double t0 = now_us();
            CHECK(wc_DecodeEccsiPvtFromSig(&ek, sig, sigSz, spvt));
            CHECK(wc_HashEccsiId(&ek, WC_HASH_TYPE_SHA256, eid, eidSz, spvt, hash, &hashSz));
            CHECK(wc_SetEccsiHash(&ek, hash, hashSz));
            CHECK(wc_VerifyEccsiHash(&ek, WC_HASH_TYPE_SHA256, msg, msgSz, sig, sigSz, &verified));
            t[i] = now_us() - t0;
            if (!verified) {
                fprintf(stderr, "wolfSSL: its own signature does not verify\n");
                return 1;
            }
        }
        printf("eccsi_verify %.1f none\n", median(t, iters));
        wc_FreeRng(&rng);
        mp_free(&ssk);
        wc_ecc_del_point(pvt);
        wc_ecc_del_point(spvt);
        wc_FreeEccsiKey(&ek);
    }
    return 0;
}
