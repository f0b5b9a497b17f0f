//! MIKEY-TICKET key forking (RFC 6043 §5.1.1, §6.11; docs/ticket-profile.md decisions 8
//! and 10).
//!
//! With the I flag set in the granted ticket policy:
//! - the KMS gives the **requester** `MPKi || MPKr || TGK...` in REQUEST_RESP
//!   ([`request_resp_keys`] with `forking = true`);
//! - the initiator puts Initiator Data `first payload = V, Vi, Vr` into the TICKET of its
//!   TRANSFER_INIT ([`attach_initiator_data`]): Vi is a copy of TRANSFER_INIT's final V,
//!   Vr a MAC over the Initiator Data keyed from MPKr (label 0x04);
//! - the KMS checks Vr when resolving ([`verify_initiator_data`]) and gives **each resolving
//!   responder** its own `MPKi || MPKr' || TGK'...` ([`resolve_resp_keys`]), forked with the
//!   ID Data of the IDRr it puts into RESOLVE_RESP and a fresh RANDRkms ([`ForkModifier`]);
//! - the responder checks that Vi equals TRANSFER_INIT's V ([`check_vi`]), answers with a
//!   TRANSFER_RESP carrying the same IDRr and RANDRkms, its V keyed from MPKr';
//! - the initiator reads the modifier from TRANSFER_RESP ([`ForkModifier::of`]) and computes
//!   the same MPKr' and TGK' from its MPKr and TGK.
//!
//! A responder cannot compute another responder's MPKr' (it never sees MPKr), so it cannot
//! answer in another identity's name.

use subtle::ConstantTimeEq;

use crate::error::{Error, Result};
use crate::kemac_crypto;
use crate::keys::{self, MSG_AUTH};
use crate::message::Message;
use crate::payload::{self, KeyData, Payload, Ticket, TicketFlags, Verification};
use crate::prf::prf;
use crate::registry::{ErrorCode, IdRole, IdType, KeyType, RandRole};
use crate::ticket::{self, MAC, PRF, Secret, TicketContent};

/// Whether a ticket policy asks for key forking (I flag, RFC 6043 §6.10).
pub fn is_forking(t: &Ticket) -> bool {
    t.policy.flags.contains(TicketFlags::I)
}

/// The forking modifier (RFC 6043 §5.1.1): the ID Data of the IDRr the KMS sends in
/// RESOLVE_RESP (repeated by the responder in TRANSFER_RESP) and RANDRkms (absent →
/// zero length, decision 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkModifier {
    /// ID Data of the responder's IDRr.
    pub id_r: Vec<u8>,
    /// ID type of that IDRr (our profile: NAI).
    pub id_type: IdType,
    /// RANDRkms.
    pub randrkms: Option<Vec<u8>>,
}

impl ForkModifier {
    /// Reads the modifier from a RESOLVE_RESP or TRANSFER_RESP: the first IDRr (role
    /// Responder) and the first RANDRkms. A message without IDRr cannot carry a fork
    /// (ERR 7 Invalid ID).
    pub fn of(m: &Message) -> Result<Self> {
        let (id_r, id_type) = m
            .find(|p| match p {
                Payload::Idr(i) if i.role == IdRole::RESPONDER => Some((i.data.clone(), i.id_type)),
                _ => None,
            })
            .ok_or_else(|| Error::rejected(ErrorCode::INVALID_ID, "forking message without IDRr"))?;
        Ok(Self { id_r, id_type, randrkms: ticket::rand_of(m, RandRole::KMS) })
    }

    fn fork(&self, constant: u32, key: &[u8]) -> Result<Secret> {
        prf(PRF, key, &keys::label_fork(constant, &self.id_r, self.randrkms.as_deref()), key.len())
    }

    /// MPKr' = PRF(MPKr, label(0x2B288856, IDRr, RANDRkms)), as long as MPKr.
    pub fn mpkr(&self, mpkr: &[u8]) -> Result<Secret> {
        self.fork(keys::FORK_MPKR, mpkr)
    }

    /// The forked form of a session key: TGK / TGK+SALT become TGK' (constant 0x1512B54A,
    /// salt and key validity kept, decision 10); TEKs and GTGKs are never forked and are
    /// returned unchanged (RFC 6043 §5.1.1).
    pub fn key(&self, k: &KeyData) -> Result<KeyData> {
        let mut out = k.clone();
        if matches!(k.key_type, KeyType::TGK | KeyType::TGK_SALT) {
            out.key = self.fork(keys::FORK_TGK, &k.key)?.to_vec();
        }
        Ok(out)
    }

    /// The IDRr and (if any) RANDRkms payloads carrying this modifier, for RESOLVE_RESP and
    /// TRANSFER_RESP.
    pub fn payloads(&self) -> Vec<Payload> {
        let mut v = vec![ticket::idr(IdRole::RESPONDER, self.id_type, &self.id_r)];
        if let Some(r) = &self.randrkms {
            v.push(ticket::randr(RandRole::KMS, r));
        }
        v
    }
}

/// The RAND of a type-2 ticket's Ticket Data (input to MPKi/MPKr, RFC 6043 A.2.2).
pub fn ticket_rand(t: &Ticket) -> Result<Vec<u8>> {
    payload::BaseTicketData::decode(&t.ticket_data, 0)
        .map_err(|e| Error::rejected(ErrorCode::INVALID_TICKET, format!("ticket data: {e}")))?
        .payloads
        .iter()
        .find_map(|p| if let Payload::Rand(r) = p { Some(r.rand.clone()) } else { None })
        .ok_or_else(|| Error::rejected(ErrorCode::INVALID_TICKET, "no RAND in ticket"))
}

/// KEMAC content of REQUEST_RESP (RFC 6043 §5.2): `MPKi || [MPKr] || keys`, MPKr only
/// when forking. `mpk_spi` is the KV SPI of MPKi/MPKr (our profile: the ticket-key id).
pub fn request_resp_keys(content: &TicketContent, rand: &[u8], mpk_spi: &[u8], forking: bool) -> Result<Vec<KeyData>> {
    let (mpki, mpkr) = ticket::mpk_i_r(&content.mpk, rand)?;
    let mut out = vec![ticket::key(KeyType::MPK, &mpki, mpk_spi)];
    if forking {
        out.push(ticket::key(KeyType::MPK, &mpkr, mpk_spi));
    }
    out.extend(content.keys.iter().cloned());
    Ok(out)
}

/// KEMAC content of RESOLVE_RESP (RFC 6043 §5.3): `MPKi || [MPKr'] || keys`, where with a
/// fork modifier MPKr' and the TGK's are forked to that responder and TEK/GTGK are passed
/// unchanged. Without a modifier the ticket's keys are passed as they are.
pub fn resolve_resp_keys(content: &TicketContent, rand: &[u8], mpk_spi: &[u8], fork: Option<&ForkModifier>) -> Result<Vec<KeyData>> {
    let (mpki, mpkr) = ticket::mpk_i_r(&content.mpk, rand)?;
    let mut out = vec![ticket::key(KeyType::MPK, &mpki, mpk_spi)];
    match fork {
        None => out.extend(content.keys.iter().cloned()),
        Some(f) => {
            out.push(ticket::key(KeyType::MPK, &f.mpkr(&mpkr)?, mpk_spi));
            for k in &content.keys {
                out.push(f.key(k)?);
            }
        }
    }
    Ok(out)
}

fn initiator_data_key(mpkr: &[u8]) -> Result<Secret> {
    let n = keys::auth_key_len(MAC).unwrap_or(32);
    prf(PRF, mpkr, &keys::label_initiator_data(MSG_AUTH), n)
}

fn initiator_data_mac(mpkr: &[u8], vi: &Verification) -> Result<Vec<u8>> {
    let n = MAC.mac_len().unwrap_or(32);
    let blank = Payload::V(Verification { auth_alg: MAC, mac: vec![0; n] });
    let enc = payload::encode_first_payload_chain(&[Payload::V(vi.clone()), blank])?;
    let covered = enc.get(..enc.len().saturating_sub(n)).unwrap_or_default();
    kemac_crypto::mac(MAC, &initiator_data_key(mpkr)?, &[covered])
}

/// Adds the Initiator Data `V(Vi), V(Vr)` to the TICKET of a sealed TRANSFER_INIT (RFC 6043
/// §6.11, decision 8). The TRANSFER_INIT MAC excludes the Initiator Data fields, so its V
/// stays valid.
pub fn attach_initiator_data(transfer_init: &[u8], mpkr: &[u8]) -> Result<Vec<u8>> {
    let mut m = Message::decode(transfer_init)?;
    let vi = match m.payloads.last() {
        Some(Payload::V(v)) => v.clone(),
        _ => return Err(Error::encode("Initiator Data", "TRANSFER_INIT does not end with V")),
    };
    let vr = Verification { auth_alg: MAC, mac: initiator_data_mac(mpkr, &vi)? };
    let data = payload::encode_first_payload_chain(&[Payload::V(vi), Payload::V(vr)])?;
    let t = m
        .payloads
        .iter_mut()
        .find_map(|p| if let Payload::Ticket(t) = p { Some(t) } else { None })
        .ok_or_else(|| Error::encode("Initiator Data", "TRANSFER_INIT has no TICKET"))?;
    t.initiator_data = data;
    m.encode()
}

/// Vi and Vr of a ticket's Initiator Data (must be exactly two V payloads).
fn vi_vr(t: &Ticket) -> Result<(Verification, Verification)> {
    let bad = |why: String| Error::rejected(ErrorCode::INVALID_TICKET, format!("Initiator Data: {why}"));
    let chain = payload::decode_first_payload_chain(&t.initiator_data, 0).map_err(|e| bad(e.to_string()))?;
    match <[Payload; 2]>::try_from(chain) {
        Ok([Payload::V(vi), Payload::V(vr)]) if vi.auth_alg == MAC && vr.auth_alg == MAC => Ok((vi, vr)),
        _ => Err(bad("expected Vi, Vr with HMAC-SHA-256-256".into())),
    }
}

/// KMS side: checks Vr of a forking ticket's Initiator Data with the MPKr derived from the
/// ticket (constant time) and returns Vi. A forking ticket without Initiator Data is
/// ERR 14 Invalid TICKET; a wrong Vr is ERR 0 Auth failure.
pub fn verify_initiator_data(t: &Ticket, mpkr: &[u8]) -> Result<Verification> {
    let (vi, vr) = vi_vr(t)?;
    let expect = initiator_data_mac(mpkr, &vi)?;
    if bool::from(expect.ct_eq(&vr.mac)) {
        Ok(vi)
    } else {
        Err(Error::rejected(ErrorCode::AUTH_FAILURE, "Initiator Data Vr does not verify"))
    }
}

/// Responder side (RFC 6043 §5.3): the MAC of TRANSFER_INIT's final V must equal Vi in the
/// ticket's Initiator Data (constant time). Call after TRANSFER_INIT's V verified with MPKi.
pub fn check_vi(transfer_init: &Message) -> Result<()> {
    let t = ticket::ticket_of(transfer_init)?;
    let (vi, _) = vi_vr(&t)?;
    match transfer_init.payloads.last() {
        Some(Payload::V(v)) if v.auth_alg == vi.auth_alg && bool::from(v.mac.ct_eq(&vi.mac)) => Ok(()),
        _ => Err(Error::rejected(ErrorCode::AUTH_FAILURE, "Initiator Data Vi differs from TRANSFER_INIT's V")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::KeyValidity;

    fn kd(key_type: KeyType, salt: Option<Vec<u8>>) -> KeyData {
        KeyData { key_type, key: vec![0x42; 16], salt, validity: KeyValidity::Spi(vec![0, 0, 0, 9]) }
    }

    #[test]
    fn only_tgks_are_forked_and_salt_and_validity_are_kept() -> Result<()> {
        let f = ForkModifier { id_r: b"bob@ims.example.org".to_vec(), id_type: IdType::NAI, randrkms: Some(vec![7; 16]) };
        let label = keys::label_fork(keys::FORK_TGK, &f.id_r, f.randrkms.as_deref());
        let expect = prf(PRF, &[0x42; 16], &label, 16)?;
        for t in [KeyType::TGK, KeyType::TGK_SALT] {
            let salt = t.has_salt().then(|| vec![5; 14]);
            let forked = f.key(&kd(t, salt.clone()))?;
            assert_eq!(forked.key.as_slice(), expect.as_slice());
            assert_eq!((&forked.salt, &forked.validity), (&salt, &KeyValidity::Spi(vec![0, 0, 0, 9])));
        }
        for t in [KeyType::TEK, KeyType::GTGK, KeyType::MPK] {
            assert_eq!(f.key(&kd(t, None))?, kd(t, None), "{t:?} is never forked");
        }
        // Another identity or RANDRkms gives another key; no RANDRkms is a zero-length field.
        let g = ForkModifier { randrkms: None, ..f.clone() };
        assert_ne!(g.key(&kd(KeyType::TGK, None))?.key, expect.to_vec());
        assert_eq!(g.mpkr(&[1; 16])?.as_slice(), prf(PRF, &[1; 16], &keys::label_fork(keys::FORK_MPKR, &f.id_r, None), 16)?.as_slice());
        assert_eq!(f.payloads().len(), 2);
        assert_eq!(g.payloads().len(), 1);
        Ok(())
    }
}
