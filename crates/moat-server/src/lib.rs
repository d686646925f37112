//! moat-server: the HTTP API, its authentication and authorization gate, configuration, and the
//! offline data-dir operations. No business rules live here: they are in `moat-core`.

pub mod backup;
pub mod bootstrap;
pub mod config;
pub mod dek;
pub mod demo;
pub mod events;
pub mod governed;
pub mod http;
pub mod keyprovider;
pub mod limiter;
pub mod mfa;
pub mod openapi;
pub mod pg;
pub mod pg_source;
pub mod report;
pub mod result_cache;
pub mod retention;
pub mod rotation;
pub mod scan;
pub mod state;
pub mod tables;
pub mod telemetry;
pub mod tls;
pub mod witness;
