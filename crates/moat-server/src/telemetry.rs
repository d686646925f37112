//! Logging: text for humans, JSON for machines; the level from `log.level` (or `RUST_LOG`).

use crate::config::LogConfig;

/// Installs the global subscriber once; later calls are no-ops (tests start many servers).
pub fn init(cfg: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("{},tower_http=warn,sqlx=warn", cfg.level)));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if cfg.format == "json" { builder.json().try_init() } else { builder.try_init() };
}
