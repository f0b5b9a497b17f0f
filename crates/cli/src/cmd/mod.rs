//! One module per subcommand.

pub(crate) mod bench;
pub(crate) mod bsf;
pub(crate) mod demo;
pub(crate) mod gba;
pub(crate) mod mikey;
pub(crate) mod sdp;
pub(crate) mod srtp;
