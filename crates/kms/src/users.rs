//! Users provisioned at the KMS (TS 33.328 §4.2.4: the KMS knows its users). Only enabled,
//! provisioned KMS UIDs may request tickets or resolve them here.

use std::collections::BTreeMap;

use crate::identity::KmsUid;

/// One provisioned user.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The user's KMS UID.
    pub uid: KmsUid,
    /// Whether the user may use the KMS.
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn enabled() -> bool {
    true
}

/// The provisioned users.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Users(BTreeMap<KmsUid, User>);

impl Users {
    /// From a list.
    pub fn new(users: impl IntoIterator<Item = User>) -> Self {
        Self(users.into_iter().map(|u| (u.uid.clone(), u)).collect())
    }

    /// Whether `uid` is provisioned and enabled.
    pub fn allows(&self, uid: &KmsUid) -> bool {
        self.0.get(uid).is_some_and(|u| u.enabled)
    }

    /// Every user.
    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.0.values()
    }
}
