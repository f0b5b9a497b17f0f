//! SRTP and SRTCP (RFC 3711) with the AES-192/256 (RFC 6188) and AES-GCM (RFC 7714) suites.
