//! moat-core: the domain types and security rules of moat.
//!
//! Everything here is pure: no files, no sockets, no clocks except through [`clock::Clock`].
//! The other crates bring the IO; the decisions (who may do what, what a valid token, key or
//! password is, when an account locks) are made here, so they can be tested from the attacker's
//! side without a server.

pub mod apikey;
pub mod audit;
pub mod audit_bundle;
pub mod audit_retention;
pub mod audit_verify;
pub mod authz;
pub mod backup;
#[cfg(feature = "testing")]
pub mod bench;
pub mod checkpoint;
pub mod classification;
pub mod clock;
pub mod error;
pub mod ids;
pub mod keys;
pub mod lockout;
pub mod mfa;
pub mod password;
pub mod permission;
pub mod principal;
pub mod role;
pub mod secret;
pub mod tlog;
pub mod token;

pub use error::{ErrorKind, MoatError, Result};
