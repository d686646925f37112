//! moat-query: the governed query engine on Apache DataFusion.
//!
//! Per request, a caller's [`moat_core::principal::Principal`] gets a session whose catalog holds
//! only its tenant's tables, each wrapped in a [`governed::GovernedTable`] that replaces every
//! column the caller may not see raw by its mask *inside the scan*, so filters, joins, grouping,
//! sorting and functions only ever see masked values. SQL is restricted to read-only queries;
//! every query runs under limits; each output column carries the high-water mark of its inputs.
//! This crate knows the caller only through the principal; persistence and audit are the
//! server's.

pub mod crypto;
pub mod engine;
pub mod governed;
pub mod ingest;
pub mod lineage;
pub mod mask;
pub mod pgcompat;
pub mod policy;
pub mod pool;
pub mod restrict;
pub mod scrub;
pub mod storage;

pub use engine::{
    Binder, Catalog, Described, Engine, EngineLimits, PlanTimings, QueryOutput, QueryStream, Request, TableSource, ViewSource,
};
pub use policy::{ColumnMeta, MaskDecision, PiiCategory};
pub use storage::TableStorage;
