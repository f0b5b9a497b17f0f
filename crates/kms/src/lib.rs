//! The mediasec KMS (3GPP TS 33.328 §4.2.4, §5.4.3, Annex A/B): MIKEY-TICKET (RFC 6043) over
//! Ua with GBA-derived keys, policies, group identities, a rotating ticket-key ring, and
//! inter-KMS resolve over Zk; plus the UE side.
//!
//! - [`identity`]: KMS UIDs and group identities (`?` wildcard).
//! - [`policy`]: per-user / per-domain rules and the narrowing of a requested ticket policy.
//! - [`keyring`]: ticket-protection keys by 4-octet key id, rotation, encryption at rest.
//! - [`tp_data`]: TP Data of tickets (identities, validity).
//! - [`zn`]: NAF keys from the BSF, cached until expiry.
//! - [`kms`]: the sans-IO core (Ticket Request, Ticket Resolve, inter-KMS resolve).
//! - [`ue`]: the UE side (request, mode-3 tickets, transfer, resolve, caches, SRTP out).
//! - [`users`]: users provisioned at the KMS.
//! - [`keyprov`]: Ua `keyprovision` *(ours)*: ECCSI signing keys for the high-security mode;
//!   [`signing_keys`]: the KMS's KSAK (sealed in the store) and the issuing side.
//! - [`community`]: KMS certificates (TS 33.180 KmsCertificate profile) of the own and of
//!   external KMS communities, for cross-community MIKEY-SAKKE.
//! - [`li`]: lawful interception: warrants and per-target key release.
//! - [`rekey`]: master-key rotation of the store's sealed rows (offline, `mediasec kms rekey`).
//!
//! Services (tokio): [`server`] (Ua, admin API, `/metrics`), [`persist`] (users, policies,
//! encrypted key ring and audit log in a `mediasec_kms_store::Store`), [`bsf_zn`] (Zn over
//! HTTP), [`zk`] (Zk peers and server over mutually authenticated TLS), [`client`] (the UE's Ua driver), [`lab`] (a loopback BSF + KMS domains).

pub mod bsf_zn;
pub mod client;
pub mod community;
pub mod error;
pub mod generations;
pub mod identity;
pub mod keyprov;
pub mod keyring;
pub mod lab;
pub mod li;
pub mod li_chain;
pub mod kms;
pub mod persist;
pub mod policy;
pub mod rekey;
pub mod tp_data;
pub mod server;
pub mod signing_keys;
pub mod ue;
pub mod users;
pub mod zk;
pub mod zn;

pub use error::KmsError;

/// Entry points shared by the fuzz target and the corpus-replay test.
#[doc(hidden)]
pub mod fuzzing {
    use std::time::Duration;

    use crate::identity::{KmsUid, Pattern};
    use crate::keyring::{KeyRing, MasterKey};
    use crate::kms::{Kms, KmsConfig, NoPeers};
    use crate::policy::{Policies, Requested};
    use crate::tp_data::TpData;
    use crate::users::Users;
    use crate::zn::{NafKey, StaticZn};

    /// Feeds arbitrary bytes to a KMS input chosen by the first byte: TP Data, identities and
    /// groups, a policy document, a stored key-ring row, or the core's Ua (ticket requests and
    /// resolves, keyprovision) / Zk / LI entry points.
    /// Must never panic.
    pub fn kms_inputs(data: &[u8]) {
        let Some((sel, rest)) = data.split_first() else { return };
        let text = String::from_utf8_lossy(rest);
        match sel % 5 {
            0 => {
                if let Ok(d) = TpData::decode(rest) {
                    let _ = d.encode();
                }
            }
            1 => {
                let (a, b) = text.split_once('\n').unwrap_or((&text, "x@y"));
                if let (Ok(u), Ok(p)) = (KmsUid::from_uri(a, "h.example"), Pattern::parse(b)) {
                    let _ = p.matches(&u);
                    let _ = p.covers(&Pattern::from(u));
                }
            }
            2 => {
                if let (Ok(p), Ok(u)) = (Policies::from_toml(&text), KmsUid::parse("a@b.example")) {
                    let req = Requested { recipients: vec![Pattern::from(u.clone())], reusable: true, forking: true, end: None };
                    let _ = p.effective(&u).grant(&req, 0, true);
                    let _ = p.to_toml();
                }
            }
            3 => {
                if let Ok(m) = MasterKey::new(&[7; 32]) {
                    let _ = KeyRing::open(&m.into(), "00000001", rest);
                }
            }
            _ => core(rest),
        }
    }

    /// Feeds arbitrary bytes to the KMS certificate decoders: as a Zk certificate answer
    /// (HTTP response, `mediasec_kms_zk::decode_certificate_answer`) and its body, and as
    /// certificate JSON directly, both as one certificate and as a certificate set (one per
    /// generation); a decoded certificate or set must re-encode to one that decodes equal,
    /// and the validity selection must not panic. Must never panic.
    pub fn kms_certificate(data: &[u8]) {
        let body = mediasec_kms_zk::decode_certificate_answer(data).ok();
        for json in body.as_deref().into_iter().chain([data]) {
            if let Ok(c) = crate::community::Community::decode(json) {
                let again = crate::community::Community::decode(&c.encode());
                assert!(again.as_ref().is_ok_and(|a| *a == c), "re-encoded certificate differs");
            }
            if let Ok(set) = crate::community::decode_set(json) {
                let again = crate::community::decode_set(&crate::community::encode_set(&set));
                assert!(again.as_ref().is_ok_and(|a| *a == set), "re-encoded certificate set differs");
                for c in &set {
                    for t in [c.valid_from(), c.valid_from().saturating_sub(1), c.valid_to().unwrap_or(u64::MAX)] {
                        let _ = crate::community::at(&set, t);
                    }
                }
            }
        }
    }

    fn core(body: &[u8]) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else { return };
        let mut ring = KeyRing::default();
        if ring.rotate(1, [3; 32]).is_err() {
            return;
        }
        let cfg = KmsConfig { fqdn: "kms.a.example".into(), domain: "a.example".into(), skew: 30 };
        let kms = Kms::new(cfg, Policies::default(), Users::default(), ring, Box::new(|b: &mut [u8]| b.fill(9)));
        let mut zn = StaticZn::default();
        zn.insert("btid", NafKey::new(&[1; 32], vec!["sip:a@a.example".into()], u64::MAX));
        let now = Duration::from_secs(1_800_000_000);
        rt.block_on(async {
            let _ = kms.ticket_request(body, now, &zn).await;
            let _ = kms.ticket_resolve(body, now, &zn, &NoPeers).await;
            let _ = kms.peer_resolve("b.example", body, now, &zn).await;
            if let (Ok(ksak), Ok(z)) = (mediasec_mikey::eccsi::KmsSecret::from_bytes(&[0x42; 32]), mediasec_mikey::sakke::KmsSecret::from_bytes(&[0x42; 32])) {
                let _ = crate::signing_keys::Provisioner::new(ksak, z).provision(&kms, body, now, &zn, &[]).await;
            }
        });
        if let Ok(target) = KmsUid::parse("a@a.example") {
            let w = crate::li::Warrant { id: "w".into(), target, not_before: 0, not_after: u64::MAX };
            let _ = kms.li_release(&w, crate::li::LiTransferInit::read(body), Some(body), now.as_secs(), None);
            let _ = kms.li_release(&w, crate::li::LiTransferInit::read(body), None, now.as_secs(), None);
        }
    }
}
