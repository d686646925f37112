//! moat-pii: automatic PII discovery.
//!
//! Pure code, no I/O: the server samples a table and hands each column's name and sampled
//! values to the scanner, which proposes a PII category, an entity, a confidence, a label and a
//! mask. This crate is built bottom-up:
//!
//! - [`validate`]: real validators for values (Luhn and IIN ranges for cards, SSN area/group/
//!   serial rules, IBAN mod-97 with per-country lengths, UK NINO, FR INSEE, e-mail, IP
//!   addresses, calendar dates). A shape alone is never enough: a 16-digit number failing Luhn
//!   is not a card, `900-12-3456` is not an SSN. Phone numbers go through libphonenumber's
//!   numbering plans (the `phonenumber` crate).
//! - [`names`]: what a column name says, in several languages and abbreviations.
//! - [`people`]: person names from bundled given-name and surname lists.
//! - [`scan`]: the column scanner (values decide, the name tips the balance), k-anonymity of
//!   quasi-identifiers, reservoir sampling.
//! - [`entity`]: entities, PII categories and default labels.

pub mod corpus;
pub mod entity;
pub mod names;
pub mod people;
pub mod scan;
pub mod validate;

pub use entity::{Category, Entity};
pub use scan::{Proposal, ScanOptions, k_anonymity, scan_column};
