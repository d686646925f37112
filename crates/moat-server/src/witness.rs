//! Publishing checkpoints to a transparency-log witness (C2SP tlog-witness): every new
//! checkpoint of a trail is submitted to `POST <audit.witness_url>/add-checkpoint` with a
//! consistency proof from the last size the witness cosigned; the witness checks it against
//! everything it saw before and answers with a timestamped cosignature (C2SP tlog-cosignature
//! v1), which is verified against `audit.witness_key` and appended to the note that the inner
//! sink (the publish directory) then publishes. A log that showed the witness one history can
//! never get a cosignature for another: a split view or a rewritten past is refused by a party
//! the operator does not control.
//!
//! The witness's last cosigned size per trail is remembered in memory; after a restart the
//! first submission says `old 0`, the witness answers 409 with its size, and the sink retries
//! once with a proof from there (as the protocol intends).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use moat_core::checkpoint::{Checkpoint, CosignatureVerifier};
use moat_core::tlog;
use moat_core::{MoatError, Result};
use moat_store::audit_log::{CheckpointKey, CheckpointSink, span_hashes};
use moat_store::{AuditStore, CheckpointRecord};

/// Longest a witness may take to answer.
const WITNESS_TIMEOUT: Duration = Duration::from_secs(10);

pub struct WitnessSink {
    /// The witness's submission prefix, without a trailing slash.
    url: String,
    witness: CosignatureVerifier,
    store: Arc<dyn AuditStore>,
    key: CheckpointKey,
    /// Publishes the cosigned note (and answers `latest`).
    inner: Option<Arc<dyn CheckpointSink>>,
    http: reqwest::Client,
    /// The size the witness last cosigned, per trail.
    cosigned: tokio::sync::Mutex<HashMap<String, u64>>,
}

fn refused(what: String) -> MoatError {
    tracing::error!(what, "the witness did not cosign the checkpoint");
    MoatError::unavailable("witness_refused", what)
}

/// What one submission got.
enum Answer {
    Cosigned(String),
    /// 409 with the witness's size for the log.
    HasSize(u64),
}

impl WitnessSink {
    pub fn new(
        url: &str,
        witness: CosignatureVerifier,
        store: Arc<dyn AuditStore>,
        key: CheckpointKey,
        inner: Option<Arc<dyn CheckpointSink>>,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(WITNESS_TIMEOUT)
            .user_agent(concat!("moat/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| MoatError::internal("witness_client"))?;
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            witness,
            store,
            key,
            inner,
            http,
            cosigned: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// One `add-checkpoint` request from `old`.
    async fn submit(&self, cp: &CheckpointRecord, old: u64) -> Result<Answer> {
        let mut req = format!("old {old}\n");
        if old > 0 && old < cp.size {
            let spans = tlog::consistency_ranges(old, cp.size).map_err(|e| refused(format!("consistency proof: {e}")))?;
            for h in span_hashes(&*self.store, &cp.trail, &spans).await? {
                req.push_str(&base64::Engine::encode(&base64::engine::general_purpose::STANDARD, h));
                req.push('\n');
            }
        }
        req.push('\n');
        req.push_str(&cp.note);
        let resp = self
            .http
            .post(format!("{}/add-checkpoint", self.url))
            .body(req)
            .send()
            .await
            .map_err(|e| refused(format!("cannot reach the witness at {}: {e}", self.url)))?;
        let status = resp.status();
        let conflict_size = status == reqwest::StatusCode::CONFLICT
            && resp.headers().get(reqwest::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/x.tlog.size"));
        let text = resp.text().await.map_err(|e| refused(format!("the witness's answer broke off: {e}")))?;
        if status.is_success() {
            return Ok(Answer::Cosigned(text));
        }
        if conflict_size && let Ok(size) = text.trim_end_matches('\n').parse::<u64>() {
            return Ok(Answer::HasSize(size));
        }
        let why = text.lines().next().unwrap_or("").chars().take(200).collect::<String>();
        Err(refused(format!("the witness answered {status} to the checkpoint of size {} of {}: {why}", cp.size, cp.trail)))
    }
}

#[async_trait]
impl CheckpointSink for WitnessSink {
    async fn publish(&self, cp: &CheckpointRecord) -> Result<()> {
        let verifier = self.key.verifier(&cp.trail)?;
        let body = verifier.open(&cp.note).map_err(|e| refused(format!("the checkpoint does not verify: {e}")))?.to_owned();
        let size = Checkpoint::parse_body(&body).map_err(|e| refused(format!("the checkpoint: {e}")))?.size;
        let mut cosigned = self.cosigned.lock().await;
        let mut old = cosigned.get(&cp.trail).copied().unwrap_or(0);
        let mut answer = self.submit(cp, old.min(size)).await?;
        if let Answer::HasSize(theirs) = answer {
            if theirs > size {
                return Err(refused(format!(
                    "the witness has cosigned {theirs} records of {} but this checkpoint has {size}: the log is behind what the witness saw",
                    cp.trail
                )));
            }
            old = theirs;
            answer = self.submit(cp, old).await?;
        }
        let Answer::Cosigned(lines) = answer else {
            return Err(refused(format!("the witness keeps answering 409 for {}", cp.trail)));
        };
        let (line, _) = self.witness.find(&lines, &body).map_err(|e| refused(format!("the witness's cosignature: {e}")))?;
        cosigned.insert(cp.trail.clone(), size);
        drop(cosigned);
        let mut note = cp.note.clone();
        note.push_str(line);
        note.push('\n');
        match &self.inner {
            Some(inner) => inner.publish(&CheckpointRecord { note, ..cp.clone() }).await,
            None => Ok(()),
        }
    }

    async fn latest(&self, trail: &str) -> Result<Option<String>> {
        match &self.inner {
            Some(inner) => inner.latest(trail).await,
            None => Ok(None),
        }
    }

    fn describe(&self) -> String {
        match &self.inner {
            Some(inner) => format!("witness {} then {}", self.url, inner.describe()),
            None => format!("witness {}", self.url),
        }
    }
}
