//! The air-gap kit: lockfile warm-up through a running proxy, with Go `h1:` and gem checksum
//! verification ([`gosum`], [`lockfile`], [`warm`]), the signed bundle format ([`bundle`]), over
//! the commands' own HTTP [`client`], and offline mode's access policy ([`offline`]).

pub mod bundle;
pub mod client;
pub mod gosum;
pub mod lockfile;
pub mod offline;
pub mod warm;
