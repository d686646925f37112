//! The audit writer and the checkpointer.
//!
//! [`AuditLog`]: one task per process drains a bounded queue and commits whatever has gathered
//! in one transaction (group commit: while one commit waits for its fsync the next batch fills).
//! A caller's [`AuditLog::append`] returns only once its record is durable; if the store cannot
//! write, every waiting caller gets `audit_unavailable` and the log reports itself unhealthy
//! (`/readyz`) until a later commit succeeds (a tenant's dedicated database that cannot write
//! refuses that tenant's callers only, and leaves the log healthy). Nothing is acknowledged before it is on disk.
//!
//! [`Checkpointer`]: signs a C2SP checkpoint of every trail that grew, at most one per trail per
//! interval, stores it and publishes it to a [`CheckpointSink`] off the database (a directory
//! by default) so that truncation or a split view of the log is detectable by anyone holding an
//! earlier checkpoint.
//!
//! [`verify_trail`]: one trail verified in the store, as the server and the offline CLI run it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use moat_core::audit::{AuditEvent, AuditKeys};
use moat_core::audit_verify::{EntryView, Problem, TrailVerifier};
use moat_core::checkpoint::{Checkpoint, NoteSigner, NoteVerifier};
use moat_core::{MoatError, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};

use crate::{Appended, AuditStore, CheckpointRecord, NewAuditEntry, StoredEntry};

fn unavailable() -> MoatError {
    MoatError::unavailable("audit_unavailable", "the audit trail cannot be written; the request was refused")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditLogConfig {
    /// Events waiting for a commit before `append` waits for room.
    pub queue: usize,
    /// Most events in one transaction.
    pub max_batch: usize,
    /// How long `append` waits for room in a full queue before refusing.
    pub enqueue_timeout: Duration,
}

impl Default for AuditLogConfig {
    fn default() -> Self {
        Self { queue: 16_384, max_batch: 4_096, enqueue_timeout: Duration::from_secs(5) }
    }
}

/// What the writer task does: appends (gathered into group commits) and, between them, stores
/// signed checkpoints — one task holds the store's write lock, so a checkpoint never waits
/// behind a stream of commits (SQLite's busy handler backs off up to 100 ms a try) and never
/// makes a commit wait for it.
#[allow(clippy::large_enum_variant)] // appends are the hot path: no allocation per event
enum Job {
    Append { entry: NewAuditEntry, reply: oneshot::Sender<Result<Appended>> },
    Checkpoint { cp: CheckpointRecord, reply: oneshot::Sender<Result<()>> },
}

struct Shared {
    healthy: AtomicBool,
    committed: AtomicU64,
    batches: AtomicU64,
    /// Signalled after each successful commit; one listener (the checkpointer), which finds a
    /// stored permit if a commit happened while it was busy.
    grew: Notify,
    /// After each commit, every trail it grew with its new last seq: the in-process event bus
    /// that live readers (`/v1/audit/stream`) wake on. Sent only while someone listens.
    committed_to: broadcast::Sender<Arc<[TrailGrew]>>,
}

/// A trail's last sequence number after a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailGrew {
    pub trail: String,
    pub seq: i64,
}

/// Commits a slow live reader may fall behind before it skips notices (it then re-reads the
/// store, so nothing is lost).
const BUS_CAPACITY: usize = 1024;

/// Handle to the writer; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    timeout: Duration,
}

impl AuditLog {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Arc<dyn AuditStore>, keys: AuditKeys, cfg: AuditLogConfig) -> Self {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let shared = Arc::new(Shared {
            healthy: AtomicBool::new(true),
            committed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            grew: Notify::new(),
            committed_to: broadcast::channel(BUS_CAPACITY).0,
        });
        tokio::spawn(run(store, keys, rx, shared.clone(), cfg.max_batch.max(1)));
        Self { tx, shared, timeout: cfg.enqueue_timeout }
    }

    /// Appends and waits until the record is durable.
    pub async fn append(&self, event: AuditEvent, ts_ms: i64) -> Result<Appended> {
        let (reply, rx) = oneshot::channel();
        let entry = NewAuditEntry { event, ts_ms, event_id: uuid::Uuid::now_v7().to_string() };
        match tokio::time::timeout(self.timeout, self.tx.send(Job::Append { entry, reply })).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(unavailable()),
            Err(_) => {
                tracing::error!("audit queue full for {:?}; refusing", self.timeout);
                return Err(unavailable());
            }
        }
        rx.await.unwrap_or_else(|_| Err(unavailable()))
    }

    /// Stores a signed checkpoint through the writer, between two commits.
    pub async fn put_checkpoint(&self, cp: CheckpointRecord) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        match tokio::time::timeout(self.timeout, self.tx.send(Job::Checkpoint { cp, reply })).await {
            Ok(Ok(())) => rx.await.unwrap_or_else(|_| Err(unavailable())),
            _ => Err(unavailable()),
        }
    }

    /// False after a failed commit, until one succeeds.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// Records committed and transactions used since start (for benchmarks and metrics).
    pub fn stats(&self) -> (u64, u64) {
        (self.shared.committed.load(Ordering::Relaxed), self.shared.batches.load(Ordering::Relaxed))
    }

    /// Notices of committed records, per commit: which trails grew to which seq. A notice says
    /// where to read, never what: readers fetch the records from the store (at least once; a
    /// lagging receiver just reads again).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[TrailGrew]>> {
        self.shared.committed_to.subscribe()
    }

    /// Resolves once a commit has happened since the last call (one listener only).
    pub async fn grown(&self) {
        self.shared.grew.notified().await;
    }
}

async fn run(store: Arc<dyn AuditStore>, keys: AuditKeys, mut rx: mpsc::Receiver<Job>, shared: Arc<Shared>, max_batch: usize) {
    let mut entries = Vec::with_capacity(max_batch);
    let mut replies = Vec::with_capacity(max_batch);
    let mut checkpoints = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Append { entry, reply } => {
                    entries.push(entry);
                    replies.push(reply);
                }
                Job::Checkpoint { cp, reply } => checkpoints.push((cp, reply)),
            }
            if entries.len() < max_batch {
                next = rx.try_recv().ok();
            }
        }
        for (cp, reply) in checkpoints.drain(..) {
            let _ = reply.send(store.put_checkpoint(&cp).await);
        }
        if entries.is_empty() {
            continue;
        }
        // All or nothing per database (a tenant's dedicated database fails for its own
        // records only); each caller hears about its own record.
        let results = store.append_each(&entries, &keys).await;
        let records: Vec<&Appended> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        // A tenant's own database refusing is that tenant's outage, not the log's.
        let healthy = results.iter().all(|r| r.as_ref().map_or_else(|e| e.code == crate::routed::TENANT_STORE_UNAVAILABLE, |_| true));
        shared.healthy.store(healthy, Ordering::Relaxed);
        if !records.is_empty() {
            shared.committed.fetch_add(records.len() as u64, Ordering::Relaxed);
            shared.batches.fetch_add(1, Ordering::Relaxed);
            shared.grew.notify_one();
            if shared.committed_to.receiver_count() > 0 {
                let mut last: HashMap<&str, i64> = HashMap::new();
                for r in &records {
                    let s = last.entry(r.trail.as_str()).or_insert(r.seq);
                    *s = (*s).max(r.seq);
                }
                let grew: Arc<[TrailGrew]> = last.into_iter().map(|(trail, seq)| TrailGrew { trail: trail.to_owned(), seq }).collect();
                let _ = shared.committed_to.send(grew);
            }
        }
        for (reply, result) in replies.drain(..).zip(results) {
            // A caller that gave up waiting still has its record committed.
            let _ = reply.send(result.map_err(|_| unavailable()));
        }
        entries.clear();
        replies.clear();
    }
}

/// Appends one event outside a running writer (offline tools: `moat superadmin create`, the
/// demo seed); durable when it returns.
pub async fn append_one(store: &dyn AuditStore, keys: &AuditKeys, event: AuditEvent, ts_ms: i64) -> Result<Appended> {
    let entry = NewAuditEntry { event, ts_ms, event_id: uuid::Uuid::now_v7().to_string() };
    store.append_batch(std::slice::from_ref(&entry), keys).await?.pop().ok_or_else(unavailable)
}

/// Hashes of proof `spans` (from `tlog::inclusion_ranges` / `consistency_ranges`), read from
/// the store's nodes in one pass.
pub async fn span_hashes(audit: &dyn AuditStore, trail: &str, spans: &[moat_core::tlog::Span]) -> Result<Vec<moat_core::tlog::Hash>> {
    use moat_core::tlog;
    let mut ids = Vec::new();
    for s in spans {
        tlog::nodes_of(*s, &mut ids);
    }
    let nodes = audit.nodes(trail, &ids).await?;
    spans
        .iter()
        .map(|s| {
            tlog::span_hash(*s, &|id| nodes.get(&id).copied()).ok_or_else(|| {
                tracing::error!(trail, "audit node missing for a proof");
                MoatError::internal("audit_node_missing")
            })
        })
        .collect()
}

/// Where signed checkpoints are published, off the database.
#[async_trait]
pub trait CheckpointSink: Send + Sync {
    async fn publish(&self, cp: &CheckpointRecord) -> Result<()>;
    /// The latest checkpoint published for a trail, if any.
    async fn latest(&self, trail: &str) -> Result<Option<String>>;
    /// Where it publishes, for logs and reports.
    fn describe(&self) -> String;
}

/// Publishes to `{dir}/{trail}/checkpoint`, replaced atomically (write, fsync, rename). Point it
/// at a mount that leaves the host (a bucket mount, a synced folder) or let a witness poll it.
pub struct DirSink {
    dir: PathBuf,
}

impl DirSink {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

fn sink_err(what: &str, e: std::io::Error) -> MoatError {
    tracing::error!(error = %e, what, "checkpoint sink");
    MoatError::unavailable("checkpoint_sink_unavailable", format!("cannot {what} the published checkpoint"))
}

#[async_trait]
impl CheckpointSink for DirSink {
    async fn publish(&self, cp: &CheckpointRecord) -> Result<()> {
        let dir = self.dir.join(&cp.trail);
        let note = cp.note.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            use std::io::Write;
            std::fs::create_dir_all(&dir).map_err(|e| sink_err("write", e))?;
            let tmp = dir.join("checkpoint.tmp");
            let mut f = std::fs::File::create(&tmp).map_err(|e| sink_err("write", e))?;
            f.write_all(note.as_bytes()).map_err(|e| sink_err("write", e))?;
            f.sync_all().map_err(|e| sink_err("write", e))?;
            std::fs::rename(&tmp, dir.join("checkpoint")).map_err(|e| sink_err("write", e))
        })
        .await
        .map_err(|_| MoatError::internal("sink_task"))?
    }

    async fn latest(&self, trail: &str) -> Result<Option<String>> {
        match tokio::fs::read_to_string(self.dir.join(trail).join("checkpoint")).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(sink_err("read", e)),
        }
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

/// The deployment's checkpoint signing key and naming: trail `t` is logged under origin
/// `{deployment}/audit/{t}`, and that origin is the key name of its signatures.
#[derive(Clone)]
pub struct CheckpointKey {
    deployment: String,
    seed: [u8; 32],
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointKey").field("deployment", &self.deployment).finish_non_exhaustive()
    }
}

impl CheckpointKey {
    pub fn new(deployment: &str, seed: [u8; 32]) -> Result<Self> {
        let k = Self { deployment: deployment.to_owned(), seed };
        k.signer("platform")?;
        Ok(k)
    }

    pub fn origin(&self, trail: &str) -> String {
        format!("{}/audit/{trail}", self.deployment)
    }

    pub fn signer(&self, trail: &str) -> Result<NoteSigner> {
        NoteSigner::from_seed(&self.origin(trail), &self.seed)
            .map_err(|e| MoatError::invalid("bad_audit_origin", format!("audit.origin: {e}")))
    }

    /// The verifier key of a trail, as auditors pin it.
    pub fn verifier(&self, trail: &str) -> Result<NoteVerifier> {
        Ok(self.signer(trail)?.verifier())
    }
}

/// Signs and publishes checkpoints of every trail that grew.
pub struct Checkpointer {
    store: Arc<dyn AuditStore>,
    key: CheckpointKey,
    sink: Option<Arc<dyn CheckpointSink>>,
    /// Size of the last checkpoint signed per trail.
    signed: HashMap<String, u64>,
    /// The writer that stores checkpoints while it runs (`run`); the store directly otherwise.
    writer: Option<AuditLog>,
}

impl Checkpointer {
    pub fn new(store: Arc<dyn AuditStore>, key: CheckpointKey, sink: Option<Arc<dyn CheckpointSink>>) -> Self {
        Self { store, key, sink, signed: HashMap::new(), writer: None }
    }

    /// One round: a checkpoint for every trail whose size moved past its last one. Returns the
    /// checkpoints made.
    pub async fn round(&mut self, now_ms: i64) -> Result<Vec<CheckpointRecord>> {
        let mut made = Vec::new();
        for (trail, head) in self.store.trail_heads().await? {
            let last = match self.signed.get(&trail) {
                Some(s) => *s,
                None => self.store.latest_checkpoint(&trail).await?.map_or(0, |c| c.size),
            };
            if head.size <= last {
                self.signed.insert(trail, last);
                continue;
            }
            let note = {
                let signer = self.key.signer(&trail)?;
                let body = Checkpoint { origin: signer.name().to_owned(), size: head.size, root: head.root, extensions: vec![] }.body();
                signer.sign(&body).map_err(|_| MoatError::internal("checkpoint_sign"))?
            };
            let cp = CheckpointRecord { trail: trail.clone(), size: head.size, ts_ms: now_ms, note };
            match &self.writer {
                Some(w) => w.put_checkpoint(cp.clone()).await?,
                None => self.store.put_checkpoint(&cp).await?,
            }
            if let Some(sink) = &self.sink {
                // The checkpoint is stored; a sink outage is logged and retried next round.
                if let Err(e) = sink.publish(&cp).await {
                    tracing::error!(code = e.code, sink = sink.describe(), "checkpoint not published");
                    continue;
                }
            }
            self.signed.insert(trail, head.size);
            made.push(cp);
        }
        Ok(made)
    }

    /// Runs a round after each commit, at most one per `interval`, forever: a record is in a
    /// signed, published checkpoint within `interval` plus one round.
    pub async fn run(mut self, log: AuditLog, interval: Duration, clock: impl Fn() -> i64 + Send) {
        self.writer = Some(log.clone());
        loop {
            log.grown().await;
            if let Err(e) = self.round(clock()).await {
                tracing::error!(code = e.code, "checkpoint round failed");
            }
            tokio::time::sleep(interval).await;
        }
    }
}

/// What verifying a trail in the store established.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    /// Records verified (all of them when `ok`).
    pub checked: u64,
    /// Hex Merkle root over the verified records.
    pub head: Option<String>,
    pub origin: String,
    pub hmacs_checked: u64,
    pub checkpoints_checked: u64,
    /// Records removed by retention (leaf hashes only), each named by a checkpointed
    /// `audit.retention` record.
    pub pruned: u64,
    /// Size of the published checkpoint, when one was found.
    pub published_size: Option<u64>,
    pub first_bad_seq: Option<i64>,
    pub problem: Option<String>,
}

/// Page size of verification reads.
const VERIFY_PAGE: u32 = 10_000;

/// Whether a row's search columns say what its entry says (the entry is the truth; a search
/// column edited to hide a record from a filter is a finding).
fn index_agrees(e: &StoredEntry) -> bool {
    use std::borrow::Cow;
    /// Only the indexed fields, borrowed where possible (verification reads every record).
    #[derive(Deserialize)]
    struct Indexed<'a> {
        ts_ms: i64,
        #[serde(borrow)]
        event_id: Cow<'a, str>,
        #[serde(borrow)]
        category: Cow<'a, str>,
        #[serde(borrow)]
        action: Cow<'a, str>,
        #[serde(borrow)]
        outcome: Cow<'a, str>,
        actor: serde_json::Value,
        #[serde(borrow)]
        resource: Option<Cow<'a, str>>,
    }
    let Some(ix) = &e.index else { return true };
    // An entry that does not parse was already reported by the verifier.
    let Ok(r) = serde_json::from_str::<Indexed<'_>>(&e.entry) else { return true };
    let actor: Option<serde_json::Value> = serde_json::from_str(&ix.actor).ok();
    ix.ts_ms == r.ts_ms
        && ix.event_id == r.event_id
        && ix.category == r.category
        && ix.action == r.action
        && ix.outcome == r.outcome
        && ix.resource.as_deref() == r.resource.as_deref()
        && actor.as_ref() == Some(&r.actor)
}

/// Verifies one trail in the store (and its published checkpoint, if a sink is given): every
/// record, every HMAC, every stored checkpoint, the store's own head. `progress(done, total)`
/// after each page. What the server's `/v1/audit/verify` and the offline `moat audit verify
/// --data-dir` run.
pub async fn verify_trail(
    audit: &dyn AuditStore,
    keys: &AuditKeys,
    checkpoint_key: &CheckpointKey,
    sink: Option<&dyn CheckpointSink>,
    trail: &str,
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport> {
    let verifier = checkpoint_key.verifier(trail)?;
    let mut v = TrailVerifier::new(trail, Some(keys.trail_key(trail)));
    let mut report = VerifyReport {
        ok: false,
        checked: 0,
        head: None,
        origin: verifier.name().to_owned(),
        hmacs_checked: 0,
        checkpoints_checked: 0,
        pruned: 0,
        published_size: None,
        first_bad_seq: None,
        problem: None,
    };
    let fail = |mut r: VerifyReport, checked: u64, p: Problem| {
        r.checked = checked;
        r.first_bad_seq = p.seq;
        r.problem = Some(p.what);
        r
    };
    let mut after = 0u64;
    loop {
        let page = audit.checkpoints(trail, after, VERIFY_PAGE).await?;
        let Some(last) = page.last().map(|c| c.size) else { break };
        for cp in &page {
            if let Err(p) = v.checkpoint(&cp.note, &verifier) {
                let what = format!("stored checkpoint of size {}: {}", cp.size, p.what);
                return Ok(fail(report, 0, Problem { seq: p.seq, what }));
            }
        }
        after = last;
    }
    if let Some(sink) = sink
        && let Some(note) = sink.latest(trail).await?
    {
        if let Err(p) = v.checkpoint(&note, &verifier) {
            return Ok(fail(report, 0, Problem { seq: p.seq, what: format!("published checkpoint: {}", p.what) }));
        }
        report.published_size =
            verifier.open(&note).ok().and_then(|t| moat_core::checkpoint::Checkpoint::parse_body(t).ok()).map(|c| c.size);
    }
    let head = audit.trail_head(trail).await?;
    let mut after = 0i64;
    loop {
        let page = audit.entries(trail, after, VERIFY_PAGE).await?;
        let Some(last) = page.last().map(|e| e.seq) else { break };
        for e in &page {
            let leaf = hex::decode(&e.leaf_hash).unwrap_or_default();
            if e.pruned {
                if let Err(p) = v.pruned(e.seq, &leaf) {
                    let checked = v.size();
                    return Ok(fail(report, checked, p));
                }
                continue;
            }
            let mac = hex::decode(&e.hmac).unwrap_or_default();
            let view = EntryView { seq: e.seq, entry: e.entry.as_bytes(), leaf_hash: Some(&leaf), hmac: Some(&mac) };
            if let Err(p) = v.entry(&view) {
                let checked = v.size();
                return Ok(fail(report, checked, p));
            }
            if !index_agrees(e) {
                let checked = v.size() - 1;
                return Ok(fail(
                    report,
                    checked,
                    Problem { seq: Some(e.seq), what: "the record's search columns differ from its entry".into() },
                ));
            }
        }
        after = last;
        progress(v.size(), head.size.max(v.size()));
    }
    let checked = v.size();
    let s = match v.finish() {
        Ok(s) => s,
        Err(p) => return Ok(fail(report, checked, p)),
    };
    report.hmacs_checked = s.hmacs_checked;
    report.checkpoints_checked = s.checkpoints_checked;
    report.pruned = s.pruned;
    report.checked = s.size;
    if s.size != head.size || s.root != head.root {
        let p = Problem {
            seq: Some(s.size.min(head.size) as i64 + 1),
            what: format!("the store's trail head ({} records) does not match its {} records", head.size, s.size),
        };
        return Ok(fail(report, checked, p));
    }
    report.ok = true;
    report.head = (s.size > 0).then(|| hex::encode(s.root));
    Ok(report)
}
