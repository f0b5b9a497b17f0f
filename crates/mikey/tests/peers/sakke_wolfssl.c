/*
 * sakke_wolfssl.c - independent SAKKE (RFC 6508, parameter set 1 of RFC 6509) peer for
 * crates/mikey/tests/mikey.rs, built at test time against Debian's libwolfssl-dev (5.5.4,
 * WOLFCRYPT_HAVE_SAKKE):
 *
 *     cc -o sakke_wolfssl sakke_wolfssl.c -lwolfssl
 *
 * All arguments are hex; Z and RSK are 0x04||x||y (257 octets), z up to 128 octets, SSV 16.
 *   sakke_wolfssl rsk z Z ID          issue the RSK of ID (wc_MakeSakkeRsk); print it
 *   sakke_wolfssl validate Z ID RSK   exit 0 "valid" / exit 2 "invalid" (wc_ValidateSakkeRsk)
 *   sakke_wolfssl encap Z ID SSV      print R||H (273 octets, wc_MakeSakkeEncapsulatedSSV)
 *   sakke_wolfssl decap Z ID RSK DATA print the SSV (wc_DeriveSakkeSSV), or exit 2 "refused"
 * Any other failure exits 1 with a message on stderr.
 */
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/sakke.h>

#include "harness.h"

static void print_hex(const byte *b, word32 n)
{
    for (word32 i = 0; i < n; i++)
        printf("%02x", b[i]);
    printf("\n");
}

/* Parameter set 1 key with the public key Z (0x04||x||y; wolfSSL imports raw x||y). */
static void init_public(SakkeKey *key, const char *hex)
{
    word32 n;
    byte *z = unhex(hex, &n);
    if (n != 257 || z[0] != 0x04) {
        fprintf(stderr, "Z must be 257 octets 0x04||x||y\n");
        exit(1);
    }
    CHECK(wc_InitSakkeKey_ex(key, 128, ECC_SAKKE_1, NULL, INVALID_DEVID));
    CHECK(wc_ImportSakkePublicKey(key, z + 1, 256, 1));
    free(z);
}

static void decode_rsk(SakkeKey *key, const char *hex, ecc_point *rsk)
{
    word32 n;
    byte *b = unhex(hex, &n);
    CHECK(wc_DecodeSakkeRsk(key, b, n, rsk));
    free(b);
}

static int make_rsk(char **argv)
{
    SakkeKey key;
    word32 zSz, idSz, outSz = 257;
    byte *zb = unhex(argv[0], &zSz), *id = unhex(argv[2], &idSz);
    byte padded[128] = {0}, out[257];
    ecc_point *rsk = wc_ecc_new_point();

    if (zSz > 128) {
        fprintf(stderr, "z longer than 128 octets\n");
        return 1;
    }
    memcpy(padded + 128 - zSz, zb, zSz);
    init_public(&key, argv[1]);
    CHECK(wc_ImportSakkePrivateKey(&key, padded, 128));
    CHECK(wc_MakeSakkeRsk(&key, id, (word16)idSz, rsk));
    CHECK(wc_EncodeSakkeRsk(&key, rsk, out, &outSz, 0));
    print_hex(out, outSz);
    wc_ecc_del_point(rsk);
    wc_FreeSakkeKey(&key);
    return 0;
}

static int validate(char **argv)
{
    SakkeKey key;
    word32 idSz;
    byte *id = unhex(argv[1], &idSz);
    int valid = 0;
    ecc_point *rsk = wc_ecc_new_point();

    init_public(&key, argv[0]);
    decode_rsk(&key, argv[2], rsk);
    if (wc_ValidateSakkeRsk(&key, id, (word16)idSz, rsk, &valid) != 0)
        valid = 0;
    puts(valid ? "valid" : "invalid");
    wc_ecc_del_point(rsk);
    wc_FreeSakkeKey(&key);
    return valid ? 0 : 2;
}

static int encap(char **argv)
{
    SakkeKey key;
    word32 idSz, ssvSz;
    byte *id = unhex(argv[1], &idSz), *ssv = unhex(argv[2], &ssvSz);
    byte auth[257];
    word16 authSz = sizeof auth;

    init_public(&key, argv[0]);
    CHECK(wc_SetSakkeIdentity(&key, id, (word16)idSz));
    /* Writes R into auth and XORs the SSV buffer in place into H. */
    CHECK(wc_MakeSakkeEncapsulatedSSV(&key, WC_HASH_TYPE_SHA256, ssv, (word16)ssvSz, auth, &authSz));
    for (word16 i = 0; i < authSz; i++)
        printf("%02x", auth[i]);
    print_hex(ssv, ssvSz);
    wc_FreeSakkeKey(&key);
    return 0;
}

static int decap(char **argv)
{
    SakkeKey key;
    word32 idSz, dataSz;
    byte *id = unhex(argv[1], &idSz), *data = unhex(argv[3], &dataSz);
    ecc_point *rsk = wc_ecc_new_point();
    byte ssv[16];

    if (dataSz != 273) {
        fprintf(stderr, "encapsulated data must be 273 octets\n");
        return 1;
    }
    init_public(&key, argv[0]);
    decode_rsk(&key, argv[2], rsk);
    CHECK(wc_SetSakkeRsk(&key, rsk, NULL, 0));
    CHECK(wc_SetSakkeIdentity(&key, id, (word16)idSz));
    memcpy(ssv, data + 257, 16);
    if (wc_DeriveSakkeSSV(&key, WC_HASH_TYPE_SHA256, ssv, 16, data, 257) != 0) {
        puts("refused");
        return 2;
    }
    print_hex(ssv, 16);
    wc_ecc_del_point(rsk);
    wc_FreeSakkeKey(&key);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "rsk") == 0)
        return make_rsk(argv + 2);
    if (argc == 5 && strcmp(argv[1], "validate") == 0)
        return validate(argv + 2);
    if (argc == 5 && strcmp(argv[1], "encap") == 0)
        return encap(argv + 2);
    if (argc == 6 && strcmp(argv[1], "decap") == 0)
        return decap(argv + 2);
    fprintf(stderr, "usage: %s rsk z Z ID | validate Z ID RSK | encap Z ID SSV | decap Z ID RSK DATA (hex)\n", argv[0]);
    return 1;
}
