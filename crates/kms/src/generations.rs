//! Community key generations (docs/high-security.md §10.10, docs/kms.md "Community key
//! rotation"): the KMS holds one or more generations of its identity-based master keys —
//! the ECCSI KSAK (RFC 6507 §4.2) and the SAKKE master secret z (RFC 6508 §2.2) — each valid
//! from an instant until the next generation's, so that an aged or compromised pair can be
//! retired without a flag day.
//!
//! - Generation 1 is the pair made at first start (`settings` rows `eccsi_ksak` and
//!   `sakke_z`, [`crate::signing_keys`]), valid from the beginning of time.
//! - Generation n ≥ 2 is `settings` row `community_gen.<n>`, sealed under the master key like
//!   the others (AAD `settings:community_gen.<n>`; `mediasec kms rekey` re-seals it with
//!   every `settings` row): `valid_from` (8 octets, Unix seconds, big-endian) ‖ KSAK (32) ‖
//!   z (128). Created only if absent ([`mediasec_kms_store::Store::put_if_absent`]), so two
//!   operators or replicas rotating at once make one generation n, and the loser is told.
//! - Generation n ends when n + 1 begins (windows contiguous: at every instant exactly one
//!   generation is *the* one). A user's keys for a month (RFC 6509 ID scheme 1) are issued
//!   under the generation valid at the month's first instant; so that this is one generation
//!   for the whole month, `valid_from` must be the first instant of a UTC month, and — so that
//!   no key already issued (the KMS issues this month's and the next month's) falls outside its
//!   generation's window — no earlier than the first instant of the month after next. Every
//!   UE renews on the last day of a month (`mediasec_ua::high_security::ready`), so each one
//!   fetches the new certificates before the new generation begins: that is the overlap.
//! - Generations are never deleted: the KMS keeps releasing, under warrant, the keys of calls
//!   made under any of them (docs/li.md), and its published certificate set keeps the old
//!   ones (their `valid_to` tells receivers they ended).
//!
//! Sans-IO except [`Persist`]'s methods (the store).

use std::sync::{Arc, OnceLock};

use mediasec_kms_store::{AuditEntry, Table};
use mediasec_mikey::eccsi::{self, KmsSecret, Kpak};
use mediasec_mikey::sakke;
use zeroize::Zeroizing;

use crate::community::{Community, fmt_time};
use crate::error::KmsError;
use crate::keyprov::Period;
use crate::persist::Persist;

/// Prefix of the `settings` rows of generations 2, 3, … (`community_gen.2`).
pub const ROW_PREFIX: &str = "community_gen.";
/// Most generations a KMS holds (the certificate set's limit, [`crate::community::MAX_SET`]).
pub const MAX_GENERATIONS: u32 = crate::community::MAX_SET as u32;
/// Octets of a generation row's plaintext.
const PLAIN_LEN: usize = 8 + eccsi::N + sakke::SECRET_LEN;

/// One generation of the community keys.
pub struct Generation {
    number: u32,
    valid_from: u64,
    ksak: KmsSecret,
    z: sakke::KmsSecret,
    /// Z = [z]P, computed on first use (a 1024-bit scalar multiplication KMS starts need not pay).
    public: OnceLock<sakke::PublicKey>,
}

impl Generation {
    /// Generation `number`, valid from Unix time `valid_from`.
    pub fn new(number: u32, valid_from: u64, ksak: KmsSecret, z: sakke::KmsSecret) -> Self {
        Self { number, valid_from, ksak, z, public: OnceLock::new() }
    }

    /// Its number (1 = the keys made at first start).
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Start of validity (Unix seconds; 0 for generation 1).
    pub fn valid_from(&self) -> u64 {
        self.valid_from
    }

    /// The KSAK.
    pub fn ksak(&self) -> &KmsSecret {
        &self.ksak
    }

    /// The KPAK.
    pub fn kpak(&self) -> Kpak {
        self.ksak.kpak()
    }

    /// The SAKKE master secret z.
    pub fn z(&self) -> &sakke::KmsSecret {
        &self.z
    }

    /// The SAKKE public key Z.
    pub fn z_public(&self) -> sakke::PublicKey {
        *self.public.get_or_init(|| self.z.public_key())
    }

    fn same_secrets(&self, other: &Self) -> bool {
        self.valid_from == other.valid_from && *self.ksak.to_bytes() == *other.ksak.to_bytes() && *self.z.to_bytes() == *other.z.to_bytes()
    }
}

/// Every generation of a KMS, oldest first, windows contiguous (module docs).
#[derive(Clone)]
pub struct Generations {
    /// Generation 1.
    first: Arc<Generation>,
    /// Generations 2, 3, …
    later: Vec<Arc<Generation>>,
}

impl Generations {
    /// Generation 1 alone (the keys made at first start).
    pub fn first(ksak: KmsSecret, z: sakke::KmsSecret) -> Self {
        Self { first: Arc::new(Generation::new(1, 0, ksak, z)), later: Vec::new() }
    }

    /// `self` with `next` appended: its number must follow and its start be later.
    pub fn push(&mut self, next: Generation) -> Result<(), KmsError> {
        let last = self.newest();
        if next.number != last.number + 1 || next.valid_from <= last.valid_from {
            return Err(KmsError::KeyRing(format!("generation {} (from {}) does not follow generation {} (from {})", next.number, fmt_time(next.valid_from), last.number, fmt_time(last.valid_from))));
        }
        self.later.push(Arc::new(next));
        Ok(())
    }

    /// `reloaded`, keeping the already computed Z of generations that did not change.
    pub fn refreshed(&self, reloaded: Self) -> Self {
        let keep = |g: Arc<Generation>| self.all().find(|o| o.number == g.number && o.same_secrets(&g)).cloned().unwrap_or(g);
        Self { first: keep(reloaded.first), later: reloaded.later.into_iter().map(keep).collect() }
    }

    /// The newest generation.
    pub fn newest(&self) -> &Arc<Generation> {
        self.later.last().unwrap_or(&self.first)
    }

    /// The generation valid at Unix time `t` (the last that began at or before it).
    pub fn at(&self, t: u64) -> &Arc<Generation> {
        self.later.iter().rev().find(|g| g.valid_from <= t).unwrap_or(&self.first)
    }

    /// End of `g`'s window: the start of the next generation (`None`: the newest).
    pub fn valid_to(&self, g: &Generation) -> Option<u64> {
        self.later.iter().find(|n| n.number == g.number + 1).map(|n| n.valid_from)
    }

    /// Every generation, oldest first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Generation>> {
        std::iter::once(&self.first).chain(&self.later)
    }

    /// The KMS certificates of every generation (oldest first) of the KMS `kms_uri` serving
    /// `domains`: with one generation, the version 1 certificate of before (no window); with
    /// several, each with its window (`valid_from` omitted for generation 1, `valid_to` for
    /// the newest).
    pub fn certificates(&self, kms_uri: &str, domains: &[String]) -> Result<Vec<Community>, KmsError> {
        self.all()
            .map(|g| {
                let from = (g.valid_from > 0).then_some(g.valid_from);
                Community::with_validity(kms_uri, g.kpak(), g.z_public(), domains, from, self.valid_to(g), false)
            })
            .collect()
    }

    /// The earliest start a new generation may have at Unix time `now`: the first instant of
    /// the month after next (module docs).
    pub fn earliest_start(now: u64) -> Result<u64, KmsError> {
        month_start(Period::of_unix(now)?.next().next())
    }

    /// Checks that `valid_from` may start a new generation at `now` (module docs): the first
    /// instant of a UTC month, no earlier than [`Self::earliest_start`], after the newest
    /// generation's start; at most [`MAX_GENERATIONS`].
    pub fn check_start(&self, valid_from: u64, now: u64) -> Result<(), KmsError> {
        let refuse = |why: String| KmsError::Config(format!("a new community key generation from {}: {why}", fmt_time(valid_from)));
        if month_start(Period::of_unix(valid_from)?)? != valid_from {
            return Err(refuse("not the first instant of a UTC month (keys are per month, RFC 6509 ID scheme 1)".into()));
        }
        let earliest = Self::earliest_start(now)?;
        if valid_from < earliest {
            return Err(refuse(format!("earlier than {} (keys for this month and the next may already be issued under the current generation)", fmt_time(earliest))));
        }
        let newest = self.newest();
        if valid_from <= newest.valid_from {
            return Err(refuse(format!("generation {} already starts at {}", newest.number, fmt_time(newest.valid_from))));
        }
        if newest.number >= MAX_GENERATIONS {
            return Err(refuse(format!("this KMS already holds {MAX_GENERATIONS} generations")));
        }
        Ok(())
    }
}

/// Unix time of the first instant of `p`.
pub fn month_start(p: Period) -> Result<u64, KmsError> {
    mediasec_gba::bootstrapping_info::parse_time(&format!("{p}-01T00:00:00Z")).map_err(|e| KmsError::KeyProvision(format!("period {p}: {e}")))
}

/// The `settings` row of generation `n` (n ≥ 2).
pub fn row(n: u32) -> String {
    format!("{ROW_PREFIX}{n}")
}

fn parse_row(plain: &[u8]) -> Result<(u64, KmsSecret, sakke::KmsSecret), String> {
    if plain.len() != PLAIN_LEN {
        return Err(format!("not {PLAIN_LEN} octets"));
    }
    let (from, rest) = plain.split_at(8);
    let (ksak, z) = rest.split_at(eccsi::N);
    let from = u64::from_be_bytes(from.try_into().map_err(|_| "valid_from")?);
    let ksak: &[u8; eccsi::N] = ksak.try_into().map_err(|_| "KSAK length")?;
    let ksak = KmsSecret::from_bytes(ksak).map_err(|e| e.to_string())?;
    let z = sakke::KmsSecret::from_bytes(z).map_err(|e| e.to_string())?;
    Ok((from, ksak, z))
}

impl Persist {
    /// Every generation: generation 1 from the KSAK and z rows (made if absent, as at every
    /// start: [`Persist::ksak_or_init`], [`Persist::sakke_z_or_init`]), then rows
    /// `community_gen.2`, `.3`, … up to the first absent one.
    pub async fn generations_or_init(&self, now_ms: u64, random: &(dyn Fn(&mut [u8]) + Sync)) -> Result<Generations, KmsError> {
        let mut gens = Generations::first(self.ksak_or_init(now_ms, random).await?, self.sakke_z_or_init(now_ms, random).await?);
        self.load_later(&mut gens).await?;
        Ok(gens)
    }

    /// Every generation as stored (`None` before the first start made generation 1).
    pub async fn generations(&self) -> Result<Option<Generations>, KmsError> {
        let (Some(ksak), Some(z)) = (self.ksak().await?, self.sakke_z().await?) else { return Ok(None) };
        let mut gens = Generations::first(ksak, z);
        self.load_later(&mut gens).await?;
        Ok(Some(gens))
    }

    async fn load_later(&self, gens: &mut Generations) -> Result<(), KmsError> {
        for n in 2..=MAX_GENERATIONS {
            let Some((from, ksak, z)) = self.settings_secret(&row(n), parse_row).await? else { break };
            gens.push(Generation::new(n, from, ksak, z))?;
        }
        Ok(())
    }

    /// Rotation of the community keys (`mediasec kms community-keys rotate`, `POST
    /// /admin/v1/community-keys/rotate`): a new generation of (KSAK, z) drawn from `random`,
    /// valid from `valid_from` (default: [`Generations::earliest_start`]) and checked by
    /// [`Generations::check_start`], sealed and created only if absent, audited
    /// `community_keys.rotate` with its number, start and KPAK. Returns every generation.
    pub async fn rotate_community_keys(&self, valid_from: Option<u64>, now: u64, random: &(dyn Fn(&mut [u8]) + Sync), actor: &str) -> Result<Generations, KmsError> {
        let mut gens = self.generations().await?.ok_or_else(|| KmsError::Config("no community keys yet: start the KMS once first".into()))?;
        let valid_from = match valid_from {
            Some(t) => t,
            None => Generations::earliest_start(now)?,
        };
        gens.check_start(valid_from, now)?;
        let n = gens.newest().number() + 1;
        let ksak = crate::signing_keys::draw_ksak(random)?;
        let z = crate::signing_keys::draw_sakke_z(random)?;
        let mut plain = Zeroizing::new(Vec::with_capacity(PLAIN_LEN));
        plain.extend_from_slice(&valid_from.to_be_bytes());
        plain.extend_from_slice(&*ksak.to_bytes());
        plain.extend_from_slice(&*z.to_bytes());
        let kpak = hex::encode(ksak.kpak().to_uncompressed());
        let sealed = self.seal(Table::Settings, &row(n), &plain)?;
        if self.store().put_if_absent(Table::Settings, &row(n), &sealed).await? != sealed {
            return Err(KmsError::Config(format!("community key generation {n} was created concurrently by another rotation; nothing was changed")));
        }
        let detail = format!("generation {n} valid from {} KPAK {kpak}", fmt_time(valid_from));
        self.store().append_audit(&AuditEntry { at_unix_ms: now.saturating_mul(1000), actor: actor.into(), action: "community_keys.rotate".into(), detail }).await?;
        gens.push(Generation::new(n, valid_from, ksak, z))?;
        Ok(gens)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn gens() -> Generations {
        Generations::first(KmsSecret::from_bytes(&[0x42; 32]).unwrap(), sakke::KmsSecret::from_bytes(&[0x5a; 32]).unwrap())
    }

    const NOW: u64 = 1_795_000_000; // 2026-11-18T09:46:40Z
    const JAN: u64 = 1_798_761_600; // 2027-01-01T00:00:00Z
    const FEB: u64 = 1_801_440_000; // 2027-02-01T00:00:00Z

    /// The start rules: the first instant of a month, no earlier than the month after next,
    /// after the newest generation; windows contiguous; the one valid at an instant; the
    /// certificates (version 1 with one generation, windows with several).
    #[test]
    fn start_rules_windows_and_certificates() {
        let mut g = gens();
        assert_eq!(Generations::earliest_start(NOW).unwrap(), JAN);
        assert_eq!(month_start(Period::parse("2027-02").unwrap()).unwrap(), FEB);
        assert!(g.check_start(JAN + 1, NOW).is_err(), "not a month start");
        assert!(g.check_start(JAN - 30 * 86_400 - 86_400, NOW).is_err(), "next month: keys may be issued for it");
        g.check_start(JAN, NOW).unwrap();
        let one = g.certificates("kms.a.example", &["a.example".into()]).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one.first().unwrap().certificate().version, crate::community::VERSION_1, "one generation: the version 1 certificate of before");
        g.push(Generation::new(2, JAN, KmsSecret::from_bytes(&[0x43; 32]).unwrap(), sakke::KmsSecret::from_bytes(&[0x5b; 32]).unwrap())).unwrap();
        assert!(g.check_start(JAN, NOW).is_err(), "not after the newest");
        assert!(g.push(Generation::new(4, FEB, KmsSecret::from_bytes(&[0x44; 32]).unwrap(), sakke::KmsSecret::from_bytes(&[0x5c; 32]).unwrap())).is_err(), "numbers follow");
        assert_eq!((g.at(0).number(), g.at(JAN - 1).number(), g.at(JAN).number(), g.at(u64::MAX).number()), (1, 1, 2, 2));
        let certs = g.certificates("kms.a.example", &["a.example".into()]).unwrap();
        let [first, second] = &certs[..] else { panic!("two certificates") };
        assert_eq!((first.valid_from(), first.valid_to(), second.valid_from(), second.valid_to()), (0, Some(JAN), JAN, None));
        assert_eq!((first.certificate().version, first.certificate().valid_from.as_deref(), first.certificate().valid_to.as_deref()), (crate::community::VERSION, None, Some("2027-01-01T00:00:00Z")));
        assert_eq!((first.kpak(), second.kpak()), (&g.at(0).kpak(), &g.at(JAN).kpak()));
        crate::community::check_disjoint(&certs).unwrap();
    }

    /// A generation row: `valid_from ‖ KSAK ‖ z`, wrong lengths refused.
    #[test]
    fn row_codec() {
        let g = gens();
        let first = g.at(0);
        let mut plain = JAN.to_be_bytes().to_vec();
        plain.extend_from_slice(&*first.ksak().to_bytes());
        plain.extend_from_slice(&*first.z().to_bytes());
        let (from, ksak, z) = parse_row(&plain).unwrap();
        assert_eq!((from, ksak.kpak(), *z.to_bytes()), (JAN, first.kpak(), *first.z().to_bytes()));
        assert!(parse_row(&plain[1..]).is_err() && parse_row(&[plain.clone(), vec![0]].concat()).is_err());
        assert_eq!(row(2), "community_gen.2");
    }
}
