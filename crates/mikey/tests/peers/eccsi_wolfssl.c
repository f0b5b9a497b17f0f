/*
 * eccsi_wolfssl.c - independent ECCSI (RFC 6507) peer for crates/mikey/tests/mikey.rs,
 * built at test time against Debian's libwolfssl-dev (5.5.4, WOLFCRYPT_HAVE_ECCSI):
 *
 *     cc -o eccsi_wolfssl eccsi_wolfssl.c -lwolfssl
 *
 * All arguments are hex; KPAK, PVT are 0x04||x||y (65 octets), SSK 32 octets.
 *   eccsi_wolfssl verify KPAK ID MSG SIG
 *       exit 0 and print "verified" if SIG (r||s||PVT) is a valid signature of MSG by ID,
 *       exit 2 and print "rejected" otherwise.
 *   eccsi_wolfssl sign KPAK ID SSK PVT MSG
 *       validate (SSK, PVT) for ID under KPAK (wc_ValidateEccsiPair, RFC 6507 §5.1.2), then
 *       sign MSG with a fresh j from wolfSSL's RNG; print the 129-octet signature in hex.
 * Any other failure exits 1 with a message on stderr.
 */
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/eccsi.h>
#include <wolfssl/wolfcrypt/random.h>

#include "harness.h"

/* wolfSSL imports the KPAK as raw x||y: drop the 0x04 tag. */
static void import_kpak(EccsiKey *key, const char *hex)
{
    word32 n;
    byte *kpak = unhex(hex, &n);
    if (n != 65 || kpak[0] != 0x04) {
        fprintf(stderr, "KPAK must be 65 octets 0x04||x||y\n");
        exit(1);
    }
    CHECK(wc_InitEccsiKey(key, NULL, INVALID_DEVID));
    CHECK(wc_ImportEccsiPublicKey(key, kpak + 1, 64, 0));
    free(kpak);
}

static int verify(char **argv)
{
    EccsiKey key;
    word32 idSz, msgSz, sigSz;
    byte *id = unhex(argv[1], &idSz), *msg = unhex(argv[2], &msgSz), *sig = unhex(argv[3], &sigSz);
    byte hash[WC_MAX_DIGEST_SIZE];
    byte hashSz = sizeof hash;
    int verified = 0;
    ecc_point *pvt = wc_ecc_new_point();

    import_kpak(&key, argv[0]);
    if (wc_DecodeEccsiPvtFromSig(&key, sig, sigSz, pvt) == 0
        && wc_HashEccsiId(&key, WC_HASH_TYPE_SHA256, id, idSz, pvt, hash, &hashSz) == 0
        && wc_SetEccsiHash(&key, hash, hashSz) == 0
        && wc_VerifyEccsiHash(&key, WC_HASH_TYPE_SHA256, msg, msgSz, sig, sigSz, &verified) != 0)
        verified = 0;
    puts(verified ? "verified" : "rejected");
    wc_ecc_del_point(pvt);
    wc_FreeEccsiKey(&key);
    return verified ? 0 : 2;
}

static int sign(char **argv)
{
    EccsiKey key;
    WC_RNG rng;
    mp_int ssk;
    word32 idSz, sskSz, pvtSz, msgSz, sigSz = 256;
    byte *id = unhex(argv[1], &idSz), *sskb = unhex(argv[2], &sskSz);
    byte *pvtb = unhex(argv[3], &pvtSz), *msg = unhex(argv[4], &msgSz);
    byte hash[WC_MAX_DIGEST_SIZE], sig[256];
    byte hashSz = sizeof hash;
    int valid = 0;
    ecc_point *pvt = wc_ecc_new_point();

    import_kpak(&key, argv[0]);
    CHECK(mp_init(&ssk));
    CHECK(wc_DecodeEccsiSsk(&key, sskb, sskSz, &ssk));
    CHECK(wc_DecodeEccsiPvt(&key, pvtb, pvtSz, pvt));
    CHECK(wc_ValidateEccsiPair(&key, WC_HASH_TYPE_SHA256, id, idSz, &ssk, pvt, &valid));
    if (!valid) {
        fprintf(stderr, "wolfSSL: (SSK, PVT) does not validate for this ID and KPAK\n");
        return 1;
    }
    CHECK(wc_SetEccsiPair(&key, &ssk, pvt));
    CHECK(wc_HashEccsiId(&key, WC_HASH_TYPE_SHA256, id, idSz, pvt, hash, &hashSz));
    CHECK(wc_SetEccsiHash(&key, hash, hashSz));
    CHECK(wc_InitRng(&rng));
    CHECK(wc_SignEccsiHash(&key, &rng, WC_HASH_TYPE_SHA256, msg, msgSz, sig, &sigSz));
    for (word32 i = 0; i < sigSz; i++)
        printf("%02x", sig[i]);
    printf("\n");
    wc_FreeRng(&rng);
    mp_free(&ssk);
    wc_ecc_del_point(pvt);
    wc_FreeEccsiKey(&key);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "verify") == 0)
        return verify(argv + 2);
    if (argc == 7 && strcmp(argv[1], "sign") == 0)
        return sign(argv + 2);
    fprintf(stderr, "usage: %s verify KPAK ID MSG SIG | sign KPAK ID SSK PVT MSG (hex)\n", argv[0]);
    return 1;
}
