//! moat-pii: automatic PII discovery.
//!
//! Pure code, no I/O: the server samples a table and hands each column's name and sampled
//! values to the scanner, which proposes a PII category, an entity, a confidence, a label and a
//! mask. This crate is built bottom-up:
//!
//! - [`validate`]: real validators for values (Luhn and IIN ranges for cards, SSN area/group/
//!   serial rules, IBAN mod-97 with per-country lengths, UK NINO, FR INSEE, e-mail, IP
//!   addresses, calendar dates). A shape alone is never enough: a 16-digit number failing Luhn
//!   is not a card, `900-12-3456` is not an SSN.

pub mod validate;
