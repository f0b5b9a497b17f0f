//! The TS 33.328 e2ae indication `a=3ge2ae:<indicator>` (TS 24.229 §7.5.2, "3GPP_e2ae-security-
//! indicator"): `indicator = "requested" / "applied" / token`, media level. `requested` is sent
//! by a UE that wants end-to-access-edge media security, `applied` by the P-CSCF (IMS-ALG) that
//! applied it. The P-CSCF removes every such indication it did not insert itself
//! (TS 33.328 §7.1), so only [`remove_all`] + [`add`] are offered as edits.

use crate::Error;
use crate::body::{Level, Sdp};
use std::fmt;

/// The attribute name.
pub const NAME: &str = "3ge2ae";

/// The indicator value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum E2aeIndication {
    /// `requested`.
    Requested,
    /// `applied`.
    Applied,
    /// Any other token (to be ignored by receivers), verbatim.
    Other(String),
}

impl E2aeIndication {
    /// Parses the value after `a=3ge2ae:`. The ABNF literals match case-insensitively
    /// (RFC 5234 §2.3); anything else must be a token (RFC 4566 §9).
    pub fn parse(value: &str) -> Result<Self, Error> {
        if value.eq_ignore_ascii_case("requested") {
            return Ok(Self::Requested);
        }
        if value.eq_ignore_ascii_case("applied") {
            return Ok(Self::Applied);
        }
        let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`{|}~".contains(c);
        match value.char_indices().find(|(_, c)| !token_char(*c)) {
            _ if value.is_empty() => Err(Error::Syntax { offset: 0, what: "indicator" }),
            Some((offset, _)) => Err(Error::Syntax { offset, what: "indicator (token)" }),
            None => Ok(Self::Other(value.to_owned())),
        }
    }

    /// `3ge2ae:<value>`, ready for [`Sdp::insert_attribute`].
    pub fn to_attribute(&self) -> String {
        format!("{NAME}:{self}")
    }
}

impl fmt::Display for E2aeIndication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Requested => "requested",
            Self::Applied => "applied",
            Self::Other(t) => t,
        })
    }
}

/// The indications of one level, parsed, in order.
pub fn find(sdp: &Sdp, level: Level) -> Result<Vec<Result<E2aeIndication, Error>>, Error> {
    Ok(sdp.attribute_values(level, NAME)?.into_iter().map(E2aeIndication::parse).collect())
}

/// Removes every `a=3ge2ae` attribute at every level (whatever its value); returns how many.
pub fn remove_all(sdp: &mut Sdp) -> usize {
    let levels: Vec<Level> = sdp.levels().collect();
    levels.into_iter().map(|l| sdp.remove_attributes(l, |a| a.name == NAME).unwrap_or(0)).sum()
}

/// Adds `a=3ge2ae:<indication>` to media section `media`, after its last attribute.
pub fn add(sdp: &mut Sdp, media: usize, indication: &E2aeIndication) -> Result<(), Error> {
    sdp.insert_attribute(Level::Media(media), &indication.to_attribute()).map(|_| ())
}
