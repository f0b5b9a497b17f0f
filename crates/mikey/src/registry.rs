//! IANA MIKEY registries as newtypes that keep unknown values (RFC 3830 §10, RFC 4563,
//! RFC 4650, RFC 4738, RFC 6043 §12, RFC 6509 §6, RFC 7714 §14.2).
//!
//! Each registry is a `Copy` newtype over its wire integer with named constants; `Debug`
//! prints the name, or the value in hex when it is not registered.

/// Defines a registry newtype with named constants and their display names.
macro_rules! registry {
    ($(#[$meta:meta])* $name:ident($repr:ty) { $($(#[$cmeta:meta])* $konst:ident = $val:literal => $label:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub $repr);

        impl $name {
            $($(#[$cmeta])* pub const $konst: Self = Self($val);)*

            /// The registered name, or `None` for an unregistered value.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($val => Some($label),)*
                    _ => None,
                }
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{:#x}", self.0),
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{} ({})", self.name().unwrap_or("Unknown"), self.0)
            }
        }
    };
}

registry! {
    /// HDR data type (RFC 3830 §6.1, RFC 4650, RFC 4738, RFC 6043 §6.1, RFC 6267, RFC 6509).
    DataType(u8) {
        /// Pre-shared key I_MESSAGE.
        PSK_INIT = 0 => "Pre-shared",
        /// PSK verification message.
        PSK_RESP = 1 => "PSK ver msg",
        /// Public-key I_MESSAGE.
        PK_INIT = 2 => "Public key",
        /// PK verification message.
        PK_RESP = 3 => "PK ver msg",
        /// Diffie-Hellman I_MESSAGE.
        DH_INIT = 4 => "D-H init",
        /// Diffie-Hellman R_MESSAGE.
        DH_RESP = 5 => "D-H resp",
        /// Error message.
        ERROR = 6 => "Error",
        /// DHHMAC I_MESSAGE (RFC 4650).
        DHHMAC_INIT = 7 => "DHHMAC init",
        /// DHHMAC R_MESSAGE (RFC 4650).
        DHHMAC_RESP = 8 => "DHHMAC resp",
        /// RSA-R I_MESSAGE (RFC 4738).
        RSA_R_INIT = 9 => "RSA-R I_MSG",
        /// RSA-R R_MESSAGE (RFC 4738).
        RSA_R_RESP = 10 => "RSA-R R_MSG",
        /// RFC 6043 REQUEST_INIT protected by a pre-shared key.
        REQUEST_INIT_PSK = 11 => "REQUEST_INIT_PSK",
        /// RFC 6043 REQUEST_INIT protected by public keys.
        REQUEST_INIT_PK = 12 => "REQUEST_INIT_PK",
        /// RFC 6043 REQUEST_RESP.
        REQUEST_RESP = 13 => "REQUEST_RESP",
        /// RFC 6043 TRANSFER_INIT.
        TRANSFER_INIT = 14 => "TRANSFER_INIT",
        /// RFC 6043 TRANSFER_RESP.
        TRANSFER_RESP = 15 => "TRANSFER_RESP",
        /// RFC 6043 RESOLVE_INIT protected by a pre-shared key.
        RESOLVE_INIT_PSK = 16 => "RESOLVE_INIT_PSK",
        /// RFC 6043 RESOLVE_INIT protected by public keys.
        RESOLVE_INIT_PK = 17 => "RESOLVE_INIT_PK",
        /// RFC 6043 RESOLVE_RESP.
        RESOLVE_RESP = 18 => "RESOLVE_RESP",
        /// RFC 6267 REQUEST_KEY_PSK.
        REQUEST_KEY_PSK = 19 => "REQUEST_KEY_PSK",
        /// RFC 6267 REQUEST_KEY_PKE.
        REQUEST_KEY_PKE = 20 => "REQUEST_KEY_PKE",
        /// RFC 6267 REQUEST_KEY_RESP.
        REQUEST_KEY_RESP = 21 => "REQUEST_KEY_RESP",
        /// RFC 6267 I_MESSAGE_1.
        IBAKE_I_MESSAGE_1 = 22 => "I_MESSAGE_1",
        /// RFC 6267 R_MESSAGE_1.
        IBAKE_R_MESSAGE_1 = 23 => "R_MESSAGE_1",
        /// RFC 6267 I_MESSAGE_2.
        IBAKE_I_MESSAGE_2 = 24 => "I_MESSAGE_2",
        /// RFC 6267 R_MESSAGE_2.
        IBAKE_R_MESSAGE_2 = 25 => "R_MESSAGE_2",
        /// RFC 6509 MIKEY-SAKKE I_MESSAGE.
        SAKKE = 26 => "SAKKE",
    }
}

registry! {
    /// Next Payload values (RFC 3830 §6.1, RFC 6043 §6, RFC 6267, RFC 6509).
    PayloadType(u8) {
        /// End of the chain.
        LAST = 0 => "Last payload",
        /// Key data transport.
        KEMAC = 1 => "KEMAC",
        /// Envelope data.
        PKE = 2 => "PKE",
        /// Diffie-Hellman.
        DH = 3 => "DH",
        /// Signature.
        SIGN = 4 => "SIGN",
        /// Timestamp.
        T = 5 => "T",
        /// Identity.
        ID = 6 => "ID",
        /// Certificate.
        CERT = 7 => "CERT",
        /// Certificate hash.
        CHASH = 8 => "CHASH",
        /// Verification.
        V = 9 => "V",
        /// Security policy.
        SP = 10 => "SP",
        /// Random value.
        RAND = 11 => "RAND",
        /// Error.
        ERR = 12 => "ERR",
        /// Timestamp with role (RFC 6043).
        TR = 13 => "TR",
        /// Identity with role (RFC 6043).
        IDR = 14 => "IDR",
        /// RAND with role (RFC 6043).
        RANDR = 15 => "RANDR",
        /// Ticket policy (RFC 6043).
        TP = 16 => "TP",
        /// Ticket (RFC 6043).
        TICKET = 17 => "TICKET",
        /// Key data sub-payload.
        KEY_DATA = 20 => "Key data",
        /// General extension.
        GENERAL_EXT = 21 => "General Ext.",
        /// IBAKE (RFC 6267, not decoded by this crate).
        IBAKE = 22 => "IBAKE",
        /// Encrypted secret key (RFC 6267, not decoded by this crate).
        ESK = 23 => "ESK",
        /// Secret key (RFC 6267, not decoded by this crate).
        SK = 24 => "SK",
        /// EC point (RFC 6267, not decoded by this crate).
        ECCPT = 25 => "ECCPT",
        /// SAKKE encapsulated data (RFC 6509).
        SAKKE = 26 => "SAKKE",
    }
}

registry! {
    /// PRF function of the HDR and of the ticket policy (RFC 3830 §6.1, RFC 6043 §6.1).
    PrfFunc(u8) {
        /// MIKEY-1 PRF with HMAC-SHA-1.
        MIKEY_1 = 0 => "MIKEY-1",
        /// PRF-HMAC-SHA-256.
        HMAC_SHA_256 = 1 => "PRF-HMAC-SHA-256",
    }
}

registry! {
    /// CS ID map type (RFC 3830 §6.1, RFC 4563 §4.1.1, RFC 6043 §6.1.1).
    CsIdMapType(u8) {
        /// SRTP-ID map.
        SRTP_ID = 0 => "SRTP-ID",
        /// Empty map.
        EMPTY = 1 => "Empty map",
        /// GENERIC-ID map.
        GENERIC_ID = 2 => "GENERIC-ID",
    }
}

registry! {
    /// KEMAC encryption algorithm (RFC 3830 §6.2, RFC 6043 §6.2).
    EncrAlg(u8) {
        /// No encryption.
        NULL = 0 => "NULL",
        /// AES counter mode, 128-bit key.
        AES_CM_128 = 1 => "AES-CM-128",
        /// AES key wrap, 128-bit key.
        AES_KW_128 = 2 => "AES-KW-128",
        /// AES counter mode, 256-bit key.
        AES_CM_256 = 3 => "AES-CM-256",
    }
}

registry! {
    /// KEMAC MAC / V authentication algorithm (RFC 3830 §6.2, RFC 6043 §6.2).
    MacAlg(u8) {
        /// No MAC.
        NULL = 0 => "NULL",
        /// HMAC-SHA-1, 160-bit tag.
        HMAC_SHA_1_160 = 1 => "HMAC-SHA-1-160",
        /// HMAC-SHA-256, 256-bit tag.
        HMAC_SHA_256_256 = 2 => "HMAC-SHA-256-256",
    }
}

impl MacAlg {
    /// Length of the MAC field in octets, `None` when the algorithm is unknown.
    pub fn mac_len(self) -> Option<usize> {
        match self {
            Self::NULL => Some(0),
            Self::HMAC_SHA_1_160 => Some(20),
            Self::HMAC_SHA_256_256 => Some(32),
            _ => None,
        }
    }
}

registry! {
    /// PKE cache indicator `C` (RFC 3830 §6.3).
    PkeCache(u8) {
        /// Do not cache.
        NO_CACHE = 0 => "No cache",
        /// Cache the envelope key.
        CACHE = 1 => "Cache",
        /// Cache for this CSB only.
        CACHE_CSB = 2 => "Cache for CSB",
    }
}

registry! {
    /// DH group (RFC 3830 §6.4).
    DhGroup(u8) {
        /// OAKLEY 5 (1536-bit MODP).
        OAKLEY_5 = 0 => "OAKLEY 5",
        /// OAKLEY 1 (768-bit MODP).
        OAKLEY_1 = 1 => "OAKLEY 1",
        /// OAKLEY 2 (1024-bit MODP).
        OAKLEY_2 = 2 => "OAKLEY 2",
    }
}

impl DhGroup {
    /// Length of the DH value in octets (the group's modulus length).
    pub fn value_len(self) -> Option<usize> {
        match self {
            Self::OAKLEY_5 => Some(192),
            Self::OAKLEY_1 => Some(96),
            Self::OAKLEY_2 => Some(128),
            _ => None,
        }
    }
}

registry! {
    /// SIGN payload signature type, 4 bits (RFC 3830 §6.5, RFC 6509 §4.3).
    SignatureType(u8) {
        /// RSA PKCS#1 v1.5.
        RSA_PKCS1_V1_5 = 0 => "RSA/PKCS#1/1.5",
        /// RSA PSS.
        RSA_PSS = 1 => "RSA/PSS",
        /// ECCSI (RFC 6507).
        ECCSI = 2 => "ECCSI",
    }
}

registry! {
    /// Timestamp type (RFC 3830 §6.6, RFC 6043 §6.6).
    TsType(u8) {
        /// NTP-UTC, 64 bits.
        NTP_UTC = 0 => "NTP-UTC",
        /// NTP (local time), 64 bits.
        NTP = 1 => "NTP",
        /// Counter, 32 bits.
        COUNTER = 2 => "COUNTER",
        /// NTP-UTC seconds only, 32 bits (RFC 6043).
        NTP_UTC_32 = 3 => "NTP-UTC-32",
    }
}

impl TsType {
    /// Length of the TS value in octets.
    pub fn value_len(self) -> Option<usize> {
        match self {
            Self::NTP_UTC | Self::NTP => Some(8),
            Self::COUNTER | Self::NTP_UTC_32 => Some(4),
            _ => None,
        }
    }
}

registry! {
    /// ID type (RFC 3830 §6.7, RFC 6043 §6.6).
    IdType(u8) {
        /// Network access identifier.
        NAI = 0 => "NAI",
        /// URI.
        URI = 1 => "URI",
        /// Byte string (RFC 6043).
        BYTE_STRING = 2 => "Byte string",
    }
}

registry! {
    /// Certificate type (RFC 3830 §6.7).
    CertType(u8) {
        /// X.509v3.
        X509V3 = 0 => "X.509v3",
        /// X.509v3 URL.
        X509V3_URL = 1 => "X.509v3 URL",
        /// X.509v3 signing certificate.
        X509V3_SIGN = 2 => "X.509v3 Sign",
        /// X.509v3 encryption certificate.
        X509V3_ENCR = 3 => "X.509v3 Encr",
    }
}

registry! {
    /// CHASH hash function (RFC 3830 §6.8, RFC 6043 §6.8).
    HashFunc(u8) {
        /// SHA-1.
        SHA_1 = 0 => "SHA-1",
        /// MD5.
        MD5 = 1 => "MD5",
        /// SHA-256.
        SHA_256 = 2 => "SHA-256",
    }
}

impl HashFunc {
    /// Hash length in octets.
    pub fn hash_len(self) -> Option<usize> {
        match self {
            Self::SHA_1 => Some(20),
            Self::MD5 => Some(16),
            Self::SHA_256 => Some(32),
            _ => None,
        }
    }
}

registry! {
    /// Security protocol of an SP payload / GENERIC-ID entry (RFC 3830 §6.10).
    ProtType(u8) {
        /// SRTP.
        SRTP = 0 => "SRTP",
    }
}

registry! {
    /// SRTP policy parameter types (RFC 3830 §6.10.1, RFC 4771, RFC 7714 §14.2).
    SrtpParam(u8) {
        /// Encryption algorithm.
        ENCR_ALG = 0 => "Encryption algorithm",
        /// Session encryption key length.
        ENCR_KEY_LEN = 1 => "Session Encr. key length",
        /// Authentication algorithm.
        AUTH_ALG = 2 => "Authentication algorithm",
        /// Session authentication key length.
        AUTH_KEY_LEN = 3 => "Session Auth. key length",
        /// Session salt key length.
        SALT_KEY_LEN = 4 => "Session Salt key length",
        /// SRTP pseudo random function.
        SRTP_PRF = 5 => "SRTP Pseudo Random Function",
        /// Key derivation rate.
        KDR = 6 => "Key derivation rate",
        /// SRTP encryption off/on.
        SRTP_ENCR = 7 => "SRTP encryption off/on",
        /// SRTCP encryption off/on.
        SRTCP_ENCR = 8 => "SRTCP encryption off/on",
        /// Sender's FEC order.
        FEC_ORDER = 9 => "Sender's FEC order",
        /// SRTP authentication off/on.
        SRTP_AUTH = 10 => "SRTP authentication off/on",
        /// Authentication tag length.
        AUTH_TAG_LEN = 11 => "Authentication tag length",
        /// SRTP prefix length.
        PREFIX_LEN = 12 => "SRTP prefix length",
        /// ROC transmission rate (RFC 4771).
        ROC_RATE = 13 => "ROC transmission rate",
        /// SRTP authentication algorithm (RFC 4771).
        SRTP_AUTH_ALG = 14 => "SRTP Auth. algorithm",
        /// SRTCP authentication algorithm (RFC 4771).
        SRTCP_AUTH_ALG = 15 => "SRTCP Auth. algorithm",
        /// SRTP session authentication key length (RFC 4771).
        SRTP_AUTH_KEY_LEN = 16 => "SRTP Session Auth. key length",
        /// SRTCP session authentication key length (RFC 4771).
        SRTCP_AUTH_KEY_LEN = 17 => "SRTCP Session Auth. key length",
        /// SRTP authentication tag length (RFC 4771).
        SRTP_AUTH_TAG_LEN = 18 => "SRTP Authentication tag length",
        /// SRTCP authentication tag length (RFC 4771).
        SRTCP_AUTH_TAG_LEN = 19 => "SRTCP Authentication tag length",
        /// AEAD authentication tag length (RFC 7714).
        AEAD_AUTH_TAG_LEN = 20 => "AEAD authentication tag length",
    }
}

registry! {
    /// ERR payload error numbers (RFC 3830 §6.12, RFC 4738, RFC 6043 §6.12).
    ErrorCode(u8) {
        /// Authentication failure.
        AUTH_FAILURE = 0 => "Authentication failure",
        /// Invalid timestamp.
        INVALID_TS = 1 => "Invalid timestamp",
        /// PRF function not supported.
        INVALID_PRF = 2 => "PRF function not supported",
        /// MAC algorithm not supported.
        INVALID_MAC = 3 => "MAC algorithm not supported",
        /// Encryption algorithm not supported.
        INVALID_EA = 4 => "Encryption algorithm not supported",
        /// Hash function not supported.
        INVALID_HA = 5 => "Hash function not supported",
        /// DH group not supported.
        INVALID_DH = 6 => "DH group not supported",
        /// ID not supported.
        INVALID_ID = 7 => "ID not supported",
        /// Certificate not supported.
        INVALID_CERT = 8 => "Certificate not supported",
        /// SP type not supported.
        INVALID_SP = 9 => "SP type not supported",
        /// SP parameters not supported.
        INVALID_SPPAR = 10 => "SP parameters not supported",
        /// Data type not supported.
        INVALID_DT = 11 => "Data type not supported",
        /// Unspecified error.
        UNSPECIFIED = 12 => "Unspecified error",
        /// Unsupported message type (RFC 4738).
        UNSUPPORTED_MESSAGE = 13 => "Unsupported message type",
        /// Ticket type not supported (RFC 6043).
        INVALID_TICKET = 14 => "Ticket type not supported",
        /// TP parameters not supported (RFC 6043).
        INVALID_TPPAR = 15 => "TP parameters not supported",
    }
}

registry! {
    /// Key data type, 4 bits (RFC 3830 §6.13, RFC 6043 §6.13, RFC 6267).
    KeyType(u8) {
        /// TEK generation key.
        TGK = 0 => "TGK",
        /// TGK with salt.
        TGK_SALT = 1 => "TGK+SALT",
        /// Traffic encryption key.
        TEK = 2 => "TEK",
        /// TEK with salt.
        TEK_SALT = 3 => "TEK+SALT",
        /// Group TGK (RFC 6043).
        GTGK = 4 => "GTGK",
        /// Group TGK with salt (RFC 6043).
        GTGK_SALT = 5 => "GTGK+SALT",
        /// MIKEY protection key (RFC 6043).
        MPK = 6 => "MPK",
        /// Private key (RFC 6267).
        K_PR = 7 => "K_PR",
    }
}

impl KeyType {
    /// Whether the Key data sub-payload of this type carries a salt field.
    pub fn has_salt(self) -> bool {
        matches!(self, Self::TGK_SALT | Self::TEK_SALT | Self::GTGK_SALT)
    }
}

registry! {
    /// Key validity type KV, 4 bits (RFC 3830 §6.13).
    KvType(u8) {
        /// No validity restriction.
        NULL = 0 => "NULL",
        /// SPI / MKI.
        SPI = 1 => "SPI/MKI",
        /// Interval.
        INTERVAL = 2 => "Interval",
    }
}

registry! {
    /// General Extension type (RFC 3830 §6.15 and later registrations).
    GeneralExtType(u8) {
        /// Vendor ID.
        VENDOR_ID = 0 => "Vendor ID",
        /// SDP IDs (RFC 4567).
        SDP_IDS = 1 => "SDP IDs",
        /// TESLA I-Key (RFC 4442).
        TESLA_I_KEY = 2 => "TESLA I-Key",
        /// Key ID (RFC 4563).
        KEY_ID = 3 => "Key ID",
        /// CSB_ID (RFC 4738).
        CSB_ID = 4 => "CSB_ID",
        /// OMA BCAST (RFC 4909).
        OMA_BCAST = 5 => "OMA BCAST",
    }
}

registry! {
    /// TR payload timestamp role (RFC 6043 §6.4).
    TsRole(u8) {
        /// Time of issue (TRi).
        TIME_OF_ISSUE = 1 => "Time of issue (TRi)",
        /// Start of validity (TRs).
        START_OF_VALIDITY = 2 => "Start of validity period (TRs)",
        /// End of validity (TRe).
        END_OF_VALIDITY = 3 => "End of validity period (TRe)",
        /// Rekeying interval (TRr).
        REKEYING_INTERVAL = 4 => "Rekeying interval (TRr)",
    }
}

registry! {
    /// IDR payload role (RFC 6043 §6.6, RFC 6509 §4.4).
    IdRole(u8) {
        /// Initiator (IDRi).
        INITIATOR = 1 => "Initiator (IDRi)",
        /// Responder (IDRr).
        RESPONDER = 2 => "Responder (IDRr)",
        /// KMS (IDRkms).
        KMS = 3 => "KMS (IDRkms)",
        /// Pre-shared key (IDRpsk).
        PSK = 4 => "Pre-Shared Key (IDRpsk)",
        /// Application (IDRapp).
        APP = 5 => "Application (IDRapp)",
        /// Initiator's KMS (IDRkmsi, RFC 6509).
        INITIATOR_KMS = 6 => "Initiator's KMS (IDRkmsi)",
        /// Responder's KMS (IDRkmsr, RFC 6509).
        RESPONDER_KMS = 7 => "Responder's KMS (IDRkmsr)",
        /// Initiator's MIKEY-SAKKE UID (TS 33.180 E.7 / F.2.1).
        INITIATOR_UID = 8 => "Initiator's UID (TS 33.180)",
        /// Responder's MIKEY-SAKKE UID (TS 33.180 E.7 / F.2.1).
        RESPONDER_UID = 9 => "Responder's UID (TS 33.180)",
    }
}

registry! {
    /// RANDR payload role (RFC 6043 §6.16).
    RandRole(u8) {
        /// Initiator (RANDRi).
        INITIATOR = 1 => "Initiator (RANDRi)",
        /// Responder (RANDRr).
        RESPONDER = 2 => "Responder (RANDRr)",
        /// KMS (RANDRkms).
        KMS = 3 => "KMS (RANDRkms)",
    }
}

registry! {
    /// Ticket type (RFC 6043 §6.10, §12).
    TicketType(u16) {
        /// MIKEY base ticket (RFC 6043 Appendix A).
        MIKEY_BASE = 1 => "MIKEY base ticket",
        /// 3GPP base ticket (TS 33.328).
        THREE_GPP = 2 => "3GPP base ticket",
    }
}

registry! {
    /// SAKKE parameter set (RFC 6509 §4.2).
    SakkeParams(u8) {
        /// RFC 6509 parameter set 1.
        PARAM_SET_1 = 1 => "Parameter set 1",
    }
}

registry! {
    /// SAKKE identifier scheme (RFC 6509 §4.2).
    SakkeIdScheme(u8) {
        /// tel URI with monthly keys.
        TEL_URI_MONTHLY = 1 => "tel URI with monthly keys",
        /// TS 33.180 F.2.1 hashed UID (the identifier is the 32-octet UID).
        TS33180_UID = 2 => "TS 33.180 UID",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_name_or_hex_and_keeps_unknown_values() {
        assert_eq!(format!("{:?}", DataType::TRANSFER_INIT), "TRANSFER_INIT");
        assert_eq!(format!("{:?}", DataType(200)), "0xc8");
        assert_eq!(format!("{}", IdRole(10)), "Unknown (10)");
        assert_eq!(format!("{}", ErrorCode::INVALID_TPPAR), "TP parameters not supported (15)");
        assert_eq!(TicketType(0xf000).0, 0xf000);
        assert_eq!(MacAlg(7).mac_len(), None);
    }
}
