//! Public-key variants of the MIKEY-TICKET initial messages (RFC 6043 §5.1 REQUEST_INIT_PK,
//! §5.3 RESOLVE_INIT_PK):
//!
//! ```text
//! REQUEST_INIT_PK = HDR, T, RANDRi, [IDRi], {CERTi}, [IDRkms], TP,     [CHASH], PKE, SIGNi
//! RESOLVE_INIT_PK = HDR, T, RANDRr, [IDRr], {CERTr}, [IDRkms], TICKET, [CHASH], PKE, SIGNr
//! ```
//!
//! - **PKE** (RFC 3830 §6.3): the envelope key `env_key` encrypted with the KMS's RSA public
//!   key, RSAES-PKCS1-v1_5 (the scheme RFC 3830 §4.2 makes mandatory for PKE). The env_key
//!   then plays the PSK's role: the KMS response's keys derive from it
//!   ([`crate::ticket::message_keys`], response direction).
//! - **SIGN** (RFC 3830 §6.5): S type 0 RSASSA-PKCS1-v1_5 or 1 RSASSA-PSS, over the message up
//!   to the Signature field (the 2-octet S type / length header included) followed by the
//!   RFC 6043 Table 5.2 identities (`Identity_i || Identity_kms`, resp.
//!   `Identity_r || Identity_kms`). The SIGN payload names no hash; ours is **SHA-256**
//!   *(ours: docs/ticket-profile.md decision 17 — the RFC text fixing the hash was not
//!   reachable here, and aws-lc-rs signs RSA with SHA-2 only)*. A peer signing with SHA-1
//!   fails verification (ERR 0). ECCSI (S type 2) is refused: [`Error::Unsupported`] when
//!   building, ERR 0 when verifying.
//! - **CERT**: the signer's certificate chain, end-entity first; **CHASH**: SHA-256 of the
//!   KMS certificate whose key encrypted the PKE (lets a KMS with several keys pick one).
//!   Certificate path validation is the caller's PKI job: the verifier receives the signer's
//!   public key from a caller-supplied lookup that may use the CERT payloads or the IDR.
//!
//! The env_key is the caller's (sans-IO); the randomness *inside* the RSA schemes (PKCS#1
//! v1.5 encryption padding, PSS salt) comes from aws-lc's DRBG, which exposes no way to
//! pass it in.

use aws_lc_rs::rsa::{KeyPair, Pkcs1PrivateDecryptingKey, Pkcs1PublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey};
use aws_lc_rs::signature::{self, KeyPair as _, RsaEncoding};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::message::Message;
use crate::payload::{Cert, Chash, Payload, Pke, Sign};
use crate::registry::{CertType, DataType, ErrorCode, HashFunc, PkeCache, SignatureType};
use crate::ticket::Secret;

fn unspecified(what: &'static str) -> impl Fn(aws_lc_rs::error::Unspecified) -> Error {
    move |_| Error::encode(what, "RSA operation failed")
}

/// The RSA signature scheme of a SIGN payload, with SHA-256 (decision 17).
fn signing_scheme(t: SignatureType) -> Result<&'static dyn RsaEncoding> {
    match t {
        SignatureType::RSA_PKCS1_V1_5 => Ok(&signature::RSA_PKCS1_SHA256),
        SignatureType::RSA_PSS => Ok(&signature::RSA_PSS_SHA256),
        other => Err(Error::Unsupported { what: "SIGN signature type (RSA only)", value: u16::from(other.0) }),
    }
}

fn verification_scheme(t: SignatureType) -> Result<&'static signature::RsaParameters> {
    match t {
        SignatureType::RSA_PKCS1_V1_5 => Ok(&signature::RSA_PKCS1_2048_8192_SHA256),
        SignatureType::RSA_PSS => Ok(&signature::RSA_PSS_2048_8192_SHA256),
        other => Err(Error::rejected(ErrorCode::AUTH_FAILURE, format!("signature type {other:?} is not supported (RSA PKCS#1 v1.5 / PSS only)"))),
    }
}

/// A CERT payload carrying a DER X.509v3 certificate.
pub fn cert(der: &[u8]) -> Payload {
    Payload::Cert(Cert { cert_type: CertType::X509V3, data: der.to_vec() })
}

/// A CHASH payload: SHA-256 of the DER certificate of the KMS key used in the PKE.
pub fn chash(kms_cert_der: &[u8]) -> Payload {
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, kms_cert_der).as_ref().to_vec();
    Payload::Chash(Chash { hash_func: HashFunc::SHA_256, hash })
}

/// Completes a REQUEST_INIT_PK / RESOLVE_INIT_PK whose payloads end before PKE: appends
/// `PKE(E(kms_key, env_key))` and `SIGN` made with `signer` (scheme `sig_type`, SHA-256)
/// over the message and `identities` (Table 5.2). `kms_key` is the KMS public key as X.509
/// SubjectPublicKeyInfo DER.
pub fn seal_pk(
    mut m: Message,
    env_key: &[u8],
    kms_key: &[u8],
    signer: &KeyPair,
    sig_type: SignatureType,
    identities: &[&[u8]],
) -> Result<Vec<u8>> {
    if !matches!(m.header.data_type, DataType::REQUEST_INIT_PK | DataType::RESOLVE_INIT_PK) {
        return Err(Error::encode("PK message", "only REQUEST_INIT_PK and RESOLVE_INIT_PK are signed initial messages"));
    }
    let scheme = signing_scheme(sig_type)?;
    let pub_key = PublicEncryptingKey::from_der(kms_key).map_err(|_| Error::encode("PKE", "KMS public key is not an RSA SubjectPublicKeyInfo"))?;
    let enc = Pkcs1PublicEncryptingKey::new(pub_key).map_err(unspecified("PKE"))?;
    let mut ct = vec![0; enc.ciphertext_size()];
    let n = enc.encrypt(env_key, &mut ct).map_err(unspecified("PKE"))?.len();
    ct.truncate(n);
    m.payloads.push(Payload::Pke(Pke { cache: PkeCache::NO_CACHE, data: ct }));
    let sig_len = signer.public_modulus_len();
    m.payloads.push(Payload::Sign(Sign { sig_type, signature: vec![0; sig_len] }));
    let mut bytes = m.encode()?;
    bytes.truncate(bytes.len().saturating_sub(sig_len));
    let mut input = bytes.clone();
    identities.iter().for_each(|i| input.extend_from_slice(i));
    let mut sig = vec![0; sig_len];
    signer.sign(scheme, &aws_lc_rs::rand::SystemRandom::new(), &input, &mut sig).map_err(unspecified("SIGN"))?;
    bytes.extend_from_slice(&sig);
    Ok(bytes)
}

/// A verified PK initial message and the envelope key it carried.
pub struct OpenedPk {
    /// The decoded message.
    pub message: Message,
    /// env_key (inkey of the response's keys).
    pub env_key: Secret,
}

impl core::fmt::Debug for OpenedPk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OpenedPk").field("message", &self.message).finish_non_exhaustive()
    }
}

/// KMS side: decodes a REQUEST_INIT_PK / RESOLVE_INIT_PK (`dt`), verifies SIGN with the
/// signer's RSA public key (RFC 8017 `RSAPublicKey` DER) that `signer_key` finds for the
/// message (from its CERT or IDR; `None` → ERR 8 Invalid Cert), then decrypts the PKE with
/// `kms_key` (PKCS#8 DER). Checks run signature first; a bad signature or undecryptable
/// PKE is ERR 0 Auth failure. `identities` is the Table 5.2 suffix (use
/// [`crate::ticket::id_of`] on the decoded message). Freshness is checked by the caller
/// ([`crate::ticket::check_fresh`]) after this returns.
pub fn open_pk(
    bytes: &[u8],
    dt: DataType,
    kms_key: &[u8],
    signer_key: impl Fn(&Message) -> Option<Vec<u8>>,
    identities: impl Fn(&Message) -> Vec<Vec<u8>>,
) -> Result<OpenedPk> {
    let m = crate::ticket::decode_expect(bytes, dt)?;
    if !matches!(dt, DataType::REQUEST_INIT_PK | DataType::RESOLVE_INIT_PK) {
        return Err(Error::rejected(ErrorCode::INVALID_DT, format!("{dt:?} is not a PK initial message")));
    }
    let (pke, sign) = match m.payloads.as_slice() {
        [.., Payload::Pke(p), Payload::Sign(s)] => (p.clone(), s.clone()),
        _ => return Err(Error::rejected(ErrorCode::UNSPECIFIED, "PK message must end with PKE, SIGN")),
    };
    let scheme = verification_scheme(sign.sig_type)?;
    let key = signer_key(&m).ok_or_else(|| Error::rejected(ErrorCode::INVALID_CERT, "no public key known for the signer"))?;
    let mut input = bytes.get(..bytes.len().saturating_sub(sign.signature.len())).unwrap_or_default().to_vec();
    identities(&m).iter().for_each(|i| input.extend_from_slice(i));
    signature::UnparsedPublicKey::new(scheme, key)
        .verify(&input, &sign.signature)
        .map_err(|_| Error::rejected(ErrorCode::AUTH_FAILURE, "signature verification failed"))?;
    let private = PrivateDecryptingKey::from_pkcs8(kms_key).map_err(|_| Error::encode("PKE", "KMS private key is not RSA PKCS#8"))?;
    let dec = Pkcs1PrivateDecryptingKey::new(private).map_err(unspecified("PKE"))?;
    let mut out = Zeroizing::new(vec![0; dec.min_output_size()]);
    let n = dec
        .decrypt(&pke.data, &mut out)
        .map_err(|_| Error::rejected(ErrorCode::AUTH_FAILURE, "PKE does not decrypt with the KMS key"))?
        .len();
    out.truncate(n);
    Ok(OpenedPk { message: m, env_key: out })
}

/// The signer's RSA public key (RFC 8017 `RSAPublicKey` DER) of a key pair, as [`open_pk`]
/// expects it from its lookup.
pub fn public_key_der(signer: &KeyPair) -> Vec<u8> {
    signer.public_key().as_ref().to_vec()
}
