//! SDES offer/answer for one media stream (RFC 4568 §7.1 with the SRTP rules of §6).
//!
//! Answerer ([`answer`]): every offered `a=crypto` line is checked (syntax, key length,
//! suite in the local list, session parameters we can honour); among the acceptable lines
//! the choice follows [`SuiteOrder`] — by default the **local** preference order (the first
//! suite of [`SdesPolicy::suites`] that any acceptable line offers, and the first such
//! line). The answer line echoes the chosen line's tag and suite with a fresh key from the
//! caller's [`KeySource`], plus the negotiated parameters (`UNENCRYPTED_SRTP`,
//! `UNENCRYPTED_SRTCP`, `UNAUTHENTICATED_SRTP`) of that line (§6.3.2, §6.3.3).
//!
//! Offerer ([`offer`], [`process_answer`]): one line per policy suite, tags 1..n in
//! preference order; the answer must carry a line whose tag names an offered line with the
//! same suite, a fresh `inline:` key and no negotiated parameter the offer did not carry.

use crate::body::{Level, Sdp};
use crate::Error;
use crate::crypto::{CryptoAttribute, InlineKey, KeyParam, Lifetime, Mki, SessionParam};
use crate::suite::CryptoSuite;
use subtle::ConstantTimeEq as _;

/// A source of fresh key material (a CSPRNG in production; randomness is passed in so the
/// negotiation stays deterministic under test).
pub trait KeySource {
    /// Fills `buf` with fresh random octets.
    fn fill(&mut self, buf: &mut [u8]);
}

impl<F: FnMut(&mut [u8])> KeySource for F {
    fn fill(&mut self, buf: &mut [u8]) {
        self(buf);
    }
}

/// Which preference decides among acceptable offered lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SuiteOrder {
    /// Local preference order ([`SdesPolicy::suites`] order). Our default.
    #[default]
    Local,
    /// The offerer's order: the first acceptable offered line (rtpengine's default).
    Offerer,
}

/// Local SDES policy, used by both roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdesPolicy {
    /// Acceptable suites, most preferred first; each must be a known suite.
    pub suites: Vec<CryptoSuite>,
    /// How the answerer orders acceptable lines.
    pub order: SuiteOrder,
    /// Accept `UNENCRYPTED_SRTP` (§6.3.2).
    pub allow_unencrypted_srtp: bool,
    /// Accept `UNENCRYPTED_SRTCP` (§6.3.2).
    pub allow_unencrypted_srtcp: bool,
    /// Accept `UNAUTHENTICATED_SRTP` (§6.3.3).
    pub allow_unauthenticated_srtp: bool,
    /// Key derivation rates (`KDR=n`) the local SRTP can apply to received media (§6.3.1);
    /// an absent KDR (no key derivation after the first) is always fine.
    pub supported_kdr: Vec<u8>,
    /// Accept `FEC_ORDER=SRTP_FEC` and `FEC_KEY` (§6.3.4, §6.3.5). `FEC_ORDER=FEC_SRTP` is
    /// the default order and is always accepted.
    pub allow_fec: bool,
    /// Lifetime written with our keys.
    pub lifetime: Option<Lifetime>,
    /// MKI `(value, length)` written with our keys.
    pub mki: Option<(u64, usize)>,
}

impl Default for SdesPolicy {
    /// The suites TS 33.328 e2ae peers offer, strongest first; nothing weakened.
    fn default() -> Self {
        Self {
            suites: vec![
                CryptoSuite::AEAD_AES_256_GCM,
                CryptoSuite::AEAD_AES_128_GCM,
                CryptoSuite::AES_256_CM_HMAC_SHA1_80,
                CryptoSuite::AES_CM_128_HMAC_SHA1_80,
                CryptoSuite::AES_CM_128_HMAC_SHA1_32,
            ],
            order: SuiteOrder::Local,
            allow_unencrypted_srtp: false,
            allow_unencrypted_srtcp: false,
            allow_unauthenticated_srtp: false,
            supported_kdr: Vec::new(),
            allow_fec: false,
            lifetime: None,
            mki: None,
        }
    }
}

/// Why one `a=crypto` line was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LineRejection {
    /// The line does not parse (including a key of the wrong length for its suite).
    Malformed(Box<Error>),
    /// The suite is not in the local list.
    UnsupportedSuite(CryptoSuite),
    /// A session parameter the local side cannot honour (text as written).
    UnsupportedParameter(String),
    /// No `inline:` key (§6.1: the only SRTP key method).
    NoInlineKey,
    /// Two offered lines share this tag (§4.1: tags are unique per media section).
    DuplicateTag(u32),
    /// Answer only: the tag names no offered line.
    UnknownTag(u32),
    /// Answer only: the suite differs from the offered line with that tag.
    SuiteMismatch {
        /// Offered suite.
        offered: CryptoSuite,
        /// Answered suite.
        answered: CryptoSuite,
    },
    /// Answer only: a negotiated parameter (§6.3.2/§6.3.3) the offer did not carry.
    ParameterNotOffered(String),
    /// Answer only: the answerer reuses the offerer's key (§7.1.2: its own key).
    KeyReused,
    /// Answer only: the answer has no `a=crypto` line (§7.1.3: negotiation failed).
    NoCryptoInAnswer,
}

impl std::fmt::Display for LineRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(e) => write!(f, "malformed a=crypto: {e}"),
            Self::UnsupportedSuite(s) => write!(f, "crypto-suite {s} not acceptable"),
            Self::UnsupportedParameter(p) => write!(f, "session parameter {p} not supported"),
            Self::NoInlineKey => f.write_str("no inline: key"),
            Self::DuplicateTag(t) => write!(f, "tag {t} used twice"),
            Self::UnknownTag(t) => write!(f, "tag {t} was not offered"),
            Self::SuiteMismatch { offered, answered } => write!(f, "answered {answered} for an offered {offered}"),
            Self::ParameterNotOffered(p) => write!(f, "answer adds {p}, which was not offered"),
            Self::KeyReused => f.write_str("answer reuses the offered key"),
            Self::NoCryptoInAnswer => f.write_str("answer has no a=crypto line"),
        }
    }
}

/// The outcome of a successful negotiation for one media stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The line carrying the key we send with (our offered line, or our answer line).
    pub local: CryptoAttribute,
    /// The peer's line (its send key; its declarative parameters apply to what we receive).
    pub remote: CryptoAttribute,
    /// `UNENCRYPTED_SRTP` negotiated.
    pub unencrypted_srtp: bool,
    /// `UNENCRYPTED_SRTCP` negotiated.
    pub unencrypted_srtcp: bool,
    /// `UNAUTHENTICATED_SRTP` negotiated.
    pub unauthenticated_srtp: bool,
}

impl Negotiated {
    /// The tag of the accepted line.
    pub fn tag(&self) -> u32 {
        self.local.tag
    }

    /// The negotiated suite.
    pub fn suite(&self) -> &CryptoSuite {
        &self.local.suite
    }
}

const NEGOTIATED: [SessionParam; 3] =
    [SessionParam::UnencryptedSrtp, SessionParam::UnencryptedSrtcp, SessionParam::UnauthenticatedSrtp];

/// Checks the declarative and negotiated parameters of a peer's line against the policy.
fn check_params(line: &CryptoAttribute, policy: &SdesPolicy) -> Result<(), LineRejection> {
    for p in &line.params {
        let ok = match p {
            SessionParam::Kdr(n) => policy.supported_kdr.contains(n),
            SessionParam::UnencryptedSrtp => policy.allow_unencrypted_srtp,
            SessionParam::UnencryptedSrtcp => policy.allow_unencrypted_srtcp,
            SessionParam::UnauthenticatedSrtp => policy.allow_unauthenticated_srtp,
            SessionParam::FecOrder(crate::crypto::FecOrder::FecSrtp) | SessionParam::Wsh(_) => true,
            SessionParam::FecOrder(_) | SessionParam::FecKey(_) => policy.allow_fec,
            SessionParam::Extension(_) => !p.is_unknown_mandatory(),
        };
        if !ok {
            return Err(LineRejection::UnsupportedParameter(p.to_string()));
        }
    }
    if line.inline_keys().next().is_none() {
        return Err(LineRejection::NoInlineKey);
    }
    Ok(())
}

/// A fresh `inline:` key for `suite` with the policy's lifetime/MKI.
fn fresh_key(suite: &CryptoSuite, policy: &SdesPolicy, keys: &mut impl KeySource) -> Result<KeyParam, Error> {
    let len = suite.key_salt_len().ok_or(Error::Policy("suite with unknown key length"))?;
    let mut material = vec![0u8; len];
    keys.fill(&mut material);
    let mki = policy.mki.map(|(v, l)| Mki::new(v, l)).transpose()?;
    Ok(KeyParam::Inline(InlineKey::new(material, policy.lifetime, mki)))
}

/// Answerer side (RFC 4568 §7.1.2): picks one offered line (see the module documentation)
/// and builds the answer line. `offered` are the `a=crypto` values of one media section,
/// in offer order. On failure every line is listed with its reason; the caller rejects the
/// stream (port 0) or the offer (488).
pub fn answer(offered: &[&str], policy: &SdesPolicy, keys: &mut impl KeySource) -> Result<Negotiated, Error> {
    let mut rejected = Vec::new();
    let mut acceptable: Vec<CryptoAttribute> = Vec::new();
    let mut seen_tags = Vec::new();
    for (i, value) in offered.iter().enumerate() {
        let verdict = CryptoAttribute::parse(value).map_err(|e| LineRejection::Malformed(Box::new(e))).and_then(|line| {
            if seen_tags.contains(&line.tag) {
                return Err(LineRejection::DuplicateTag(line.tag));
            }
            seen_tags.push(line.tag);
            if !policy.suites.contains(&line.suite) {
                return Err(LineRejection::UnsupportedSuite(line.suite));
            }
            check_params(&line, policy)?;
            Ok(line)
        });
        match verdict {
            Ok(line) => acceptable.push(line),
            Err(r) => rejected.push((i, r)),
        }
    }
    let chosen = match policy.order {
        SuiteOrder::Offerer => acceptable.into_iter().next(),
        SuiteOrder::Local => policy
            .suites
            .iter()
            .find_map(|s| acceptable.iter().position(|l| &l.suite == s))
            .and_then(|pos| acceptable.into_iter().nth(pos)),
    };
    let remote = chosen.ok_or(Error::NoAcceptableCrypto { rejected })?;
    let params: Vec<SessionParam> = NEGOTIATED.into_iter().filter(|p| remote.has_param(p)).collect();
    let local = CryptoAttribute {
        tag: remote.tag,
        suite: remote.suite.clone(),
        keys: vec![fresh_key(&remote.suite, policy, keys)?],
        params,
    };
    Ok(negotiated(local, remote))
}

/// Answerer side for a whole offer: [`answer`] for every media section that carries
/// `a=crypto`, in body order, as `(media index, outcome)` — one answer line per accepted
/// media; a rejected media is reported with its reasons.
pub fn answer_sdp(offer: &Sdp, policy: &SdesPolicy, keys: &mut impl KeySource) -> Vec<(usize, Result<Negotiated, Error>)> {
    (0..offer.media_count())
        .filter_map(|i| {
            let values = offer.attribute_values(Level::Media(i), CryptoAttribute::NAME).ok()?;
            (!values.is_empty()).then(|| (i, answer(&values, policy, keys)))
        })
        .collect()
}

fn negotiated(local: CryptoAttribute, remote: CryptoAttribute) -> Negotiated {
    let both = |p: &SessionParam| local.has_param(p) && remote.has_param(p);
    Negotiated {
        unencrypted_srtp: both(&SessionParam::UnencryptedSrtp),
        unencrypted_srtcp: both(&SessionParam::UnencryptedSrtcp),
        unauthenticated_srtp: both(&SessionParam::UnauthenticatedSrtp),
        local,
        remote,
    }
}

/// Offerer side: one line per policy suite, most preferred first, tags 1..n, each with its
/// own fresh key (§7.1.1), and the negotiated parameters the policy allows us to use.
pub fn offer(policy: &SdesPolicy, keys: &mut impl KeySource) -> Result<Vec<CryptoAttribute>, Error> {
    if policy.suites.is_empty() {
        return Err(Error::Policy("no suite to offer"));
    }
    let mut params = Vec::new();
    for (allowed, p) in [
        (policy.allow_unencrypted_srtp, SessionParam::UnencryptedSrtp),
        (policy.allow_unencrypted_srtcp, SessionParam::UnencryptedSrtcp),
        (policy.allow_unauthenticated_srtp, SessionParam::UnauthenticatedSrtp),
    ] {
        if allowed {
            params.push(p);
        }
    }
    policy
        .suites
        .iter()
        .zip(1u32..)
        .map(|(suite, tag)| {
            Ok(CryptoAttribute { tag, suite: suite.clone(), keys: vec![fresh_key(suite, policy, keys)?], params: params.clone() })
        })
        .collect()
}

/// Offerer side (§7.1.3): checks the answer's `a=crypto` values against our offered lines.
/// An answer must accept exactly one line; peers that send several (rtpengine#631) are
/// tolerated: the first line whose tag names an offered line is used.
pub fn process_answer(offered: &[CryptoAttribute], answer: &[&str], policy: &SdesPolicy) -> Result<Negotiated, Error> {
    let mut first_problem = None;
    for value in answer {
        let line = match CryptoAttribute::parse(value) {
            Ok(l) => l,
            Err(e) => {
                first_problem.get_or_insert(LineRejection::Malformed(Box::new(e)));
                continue;
            }
        };
        let Some(ours) = offered.iter().find(|o| o.tag == line.tag) else {
            first_problem.get_or_insert(LineRejection::UnknownTag(line.tag));
            continue;
        };
        if ours.suite != line.suite {
            return Err(Error::BadAnswer(LineRejection::SuiteMismatch {
                offered: ours.suite.clone(),
                answered: line.suite,
            }));
        }
        if let Some(p) = NEGOTIATED.iter().find(|p| line.has_param(p) && !ours.has_param(p)) {
            return Err(Error::BadAnswer(LineRejection::ParameterNotOffered(p.to_string())));
        }
        check_params(&line, policy).map_err(Error::BadAnswer)?;
        let reused = line.inline_keys().any(|theirs| {
            ours.inline_keys().any(|mine| bool::from(mine.key_salt().ct_eq(theirs.key_salt())))
        });
        if reused {
            return Err(Error::BadAnswer(LineRejection::KeyReused));
        }
        return Ok(negotiated(ours.clone(), line));
    }
    Err(Error::BadAnswer(first_problem.unwrap_or(LineRejection::NoCryptoInAnswer)))
}
