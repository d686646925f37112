//! Audit records fan out to NATS JetStream (`events.url`) for SIEM and other consumers.
//!
//! The audit store is the spool. A record is acknowledged to its request once it is durable in
//! the store (the audit writer); the forwarder then publishes it, in sequence order per trail,
//! and moves the trail's cursor (kept in the store) past it only once JetStream has
//! acknowledged it. So NATS being down never refuses a request and never loses an event:
//! records wait in the store, the forwarder retries with backoff, `/readyz` reports the lag,
//! and forwarding resumes where it stopped — on this replica or another. Delivery is at least
//! once: each message carries the record's event id as `Nats-Msg-Id` (JetStream drops a repeat
//! inside the stream's duplicate window) and in its body (consumers dedupe by it).
//!
//! Subjects: `tenant.{id}.audit` for every record of a tenant's trail (`platform.audit` for the
//! platform's) and, by domain, `tenant.{id}.admin|ingest|classification` ([`domain_of`]), each
//! under `events.namespace.` when one is set. Replicas: a trail's cursor is leased to one
//! replica at a time and renewed every round; another takes over when a lease runs out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use moat_core::MoatError;
use moat_core::audit::{PLATFORM_TRAIL, trail_tenant};
use moat_store::audit_log::AuditLog;
use moat_store::{AuditFilter, AuditRecord, AuditStore};

use crate::config::EventsConfig;

/// The cursors' sink name in the store.
const SINK: &str = "nats";
/// How long a replica holds a trail once it has leased it (renewed every round).
const LEASE_MS: i64 = 15_000;
/// Records read and published per trail per round.
const PAGE: u32 = 500;
/// A round at least this often, for other replicas' commits (this replica's wake it at once).
const POLL: Duration = Duration::from_secs(1);
/// Longest wait between rounds after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The domain subject a record also goes to, besides `audit`.
pub fn domain_of(category: &str, action: &str) -> Option<&'static str> {
    if action.starts_with("table.") {
        Some("ingest")
    } else if action.starts_with("classification.") {
        Some("classification")
    } else if category == "admin" {
        Some("admin")
    } else {
        None
    }
}

/// What `/readyz` says about forwarding.
#[derive(Debug, Default)]
pub struct ForwardStatus {
    healthy: AtomicBool,
    published: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ForwardStatus {
    /// `ok`, or why the events are waiting (they are kept in the store meanwhile).
    pub fn describe(&self) -> String {
        if self.healthy.load(Ordering::Relaxed) {
            return "ok".into();
        }
        let why = self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        format!("lagging: {} (events wait in the audit store)", why.unwrap_or_else(|| "not connected yet".into()))
    }

    /// Messages JetStream has acknowledged since start.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    fn failed(&self, why: String) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %why, "event forwarding to NATS paused; records wait in the audit store");
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    fn succeeded(&self) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!("event forwarding to NATS running");
        }
    }
}

pub struct Forwarder {
    store: Arc<dyn AuditStore>,
    js: jetstream::Context,
    cfg: EventsConfig,
    /// This replica's lease owner name.
    owner: String,
    status: Arc<ForwardStatus>,
    stream_ready: bool,
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A NATS error as a short reason (never the URL, which may carry credentials).
fn reason(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl Forwarder {
    /// Connects (in the background: a server starts while NATS is down) and spawns the
    /// forwarding loop on the current runtime.
    pub async fn start(cfg: &EventsConfig, store: Arc<dyn AuditStore>, audit: AuditLog) -> Result<Arc<ForwardStatus>, MoatError> {
        let client = async_nats::ConnectOptions::new()
            .name("moat")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(cfg.url.as_str())
            .await
            .map_err(|e| MoatError::invalid("config_invalid", format!("events.url: cannot use it ({e})")))?;
        let status = Arc::new(ForwardStatus::default());
        let fwd = Self {
            store,
            js: jetstream::new(client),
            cfg: cfg.clone(),
            owner: format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple()),
            status: status.clone(),
            stream_ready: false,
        };
        tokio::spawn(fwd.run(audit));
        Ok(status)
    }

    fn subject(&self, trail: &str, domain: &str) -> String {
        let ns = if self.cfg.namespace.is_empty() { String::new() } else { format!("{}.", self.cfg.namespace) };
        match trail_tenant(trail) {
            Some(Some(t)) => format!("{ns}tenant.{t}.{domain}"),
            _ => format!("{ns}{PLATFORM_TRAIL}.{domain}"),
        }
    }

    async fn run(mut self, audit: AuditLog) {
        let mut notices = audit.subscribe();
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.round().await {
                Ok(more) => {
                    self.status.succeeded();
                    backoff = Duration::from_millis(200);
                    if more {
                        continue;
                    }
                    tokio::select! {
                        _ = notices.recv() => {}
                        () = tokio::time::sleep(POLL) => {}
                    }
                }
                Err(why) => {
                    self.status.failed(why);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn ensure_stream(&mut self) -> Result<(), String> {
        if self.stream_ready {
            return Ok(());
        }
        let ns = if self.cfg.namespace.is_empty() { String::new() } else { format!("{}.", self.cfg.namespace) };
        let config = stream::Config {
            name: self.cfg.stream.clone(),
            subjects: vec![format!("{ns}tenant.*.*"), format!("{ns}{PLATFORM_TRAIL}.*")],
            max_age: Duration::from_secs(self.cfg.max_age_days * 86_400),
            max_bytes: self.cfg.max_bytes,
            duplicate_window: Duration::from_secs(self.cfg.duplicate_window_s),
            storage: stream::StorageType::File,
            ..Default::default()
        };
        self.js.get_or_create_stream(config).await.map_err(|e| reason("stream", e))?;
        self.stream_ready = true;
        Ok(())
    }

    /// Forwards what is waiting in every trail this replica can lease; whether a trail had a
    /// full page (more is waiting).
    async fn round(&mut self) -> Result<bool, String> {
        self.ensure_stream().await?;
        let heads = self.store.trail_heads().await.map_err(|e| reason("audit store", e.code))?;
        let mut more = false;
        for (trail, head) in heads {
            let now = wall_ms();
            // A trail first seen starts at its beginning: the stream gets the history from
            // before forwarding was configured too (what retention kept of it).
            let leased = self.store.lease_cursor(SINK, &trail, &self.owner, now, now + LEASE_MS, 0).await;
            let Some(cursor) = leased.map_err(|e| reason("audit store", e.code))? else { continue };
            if cursor >= head.size as i64 {
                continue;
            }
            let filter = AuditFilter { after_seq: Some(cursor), limit: PAGE, ..AuditFilter::default() };
            let records = self.store.list(trail_tenant(&trail).flatten(), &filter).await.map_err(|e| reason("audit store", e.code))?;
            more |= records.len() == PAGE as usize;
            // Nothing after the cursor up to the head: retention took those records.
            let (last, failure) = if records.is_empty() { (Some(head.size as i64), None) } else { self.publish(&trail, &records).await };
            if let Some(last) = last {
                self.store.advance_cursor(SINK, &trail, &self.owner, last).await.map_err(|e| reason("audit store", e.code))?;
            }
            if let Some(why) = failure {
                return Err(why);
            }
        }
        Ok(more)
    }

    /// Publishes `records` (in seq order; each to `audit` and maybe its domain subject) and
    /// waits for JetStream's acknowledgements. Returns the last seq whose messages were all
    /// acknowledged, with every record before it, and why it stopped short, if it did.
    async fn publish(&self, trail: &str, records: &[AuditRecord]) -> (Option<i64>, Option<String>) {
        let mut sent = Vec::with_capacity(records.len());
        let mut failure = None;
        'records: for r in records {
            let body = match serde_json::to_vec(r) {
                Ok(b) => bytes::Bytes::from(b),
                Err(e) => {
                    failure = Some(reason("encode", e));
                    break;
                }
            };
            let mut messages = vec![(self.subject(trail, "audit"), r.event_id.clone())];
            if let Some(d) = domain_of(&r.category, &r.action) {
                messages.push((self.subject(trail, d), format!("{}:{d}", r.event_id)));
            }
            let mut acks = Vec::with_capacity(messages.len());
            for (subject, id) in messages {
                match self.js.send_publish(subject, PublishMessage::build().payload(body.clone()).message_id(id)).await {
                    Ok(ack) => acks.push(ack),
                    Err(e) => {
                        failure = Some(reason("publish", e));
                        break 'records;
                    }
                }
            }
            sent.push((r.seq, acks));
        }
        let mut last = None;
        for (seq, acks) in sent {
            for ack in acks {
                if let Err(e) = ack.await {
                    return (last, Some(reason("acknowledgement", e)));
                }
                self.status.published.fetch_add(1, Ordering::Relaxed);
            }
            last = Some(seq);
        }
        // A record that could not be sent stops the page after the records before it.
        (last, failure)
    }
}

#[cfg(test)]
mod tests {
    use super::domain_of;

    #[test]
    fn records_find_their_domain() {
        assert_eq!(domain_of("data_access", "table.write"), Some("ingest"));
        assert_eq!(domain_of("admin", "table.delete"), Some("ingest"));
        assert_eq!(domain_of("admin", "classification.change"), Some("classification"));
        assert_eq!(domain_of("admin", "user.create"), Some("admin"));
        assert_eq!(domain_of("data_access", "query.run"), None);
        assert_eq!(domain_of("auth", "auth.login"), None);
    }
}
