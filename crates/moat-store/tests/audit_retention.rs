//! Retention end to end on the embedded store, with the clock passed in (a fake clock): records
//! leave only behind a checkpointed `audit.retention` record, the trail still verifies (roots,
//! old checkpoints, proofs), an interrupted run is finished by the next, and a deletion that
//! retention did not name is a finding — from the attacker's side.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use moat_core::audit::{Actor, AuditEvent, AuditKeys, Category, Outcome};
use moat_core::ids::TenantId;
use moat_core::tlog;
use moat_store::audit_log::{AuditLog, AuditLogConfig, CheckpointKey, CheckpointSink, Checkpointer, DirSink, verify_trail};
use moat_store::retention::{Retention, RetentionRules};
use moat_store::sqlite::SqliteStore;
use moat_store::{AuditStore, Stores};

const DAY_MS: i64 = 86_400_000;
const T0: i64 = 1_780_000_000_000;

struct Env {
    _dir: tempfile::TempDir,
    store: Arc<dyn AuditStore>,
    raw: SqliteStore,
    log: AuditLog,
    keys: AuditKeys,
    key: CheckpointKey,
    sink: Arc<DirSink>,
    tenant: TenantId,
}

impl Env {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moat.db");
        let stores = Stores::from_sqlite(SqliteStore::open(&path).await.unwrap());
        let raw = SqliteStore::open(&path).await.unwrap();
        let keys = AuditKeys::new([4; 32]);
        let log = AuditLog::start(stores.audit.clone(), keys.clone(), AuditLogConfig::default());
        let key = CheckpointKey::new("moat.test", [5; 32]).unwrap();
        let sink = Arc::new(DirSink::new(dir.path().join("checkpoints")));
        Self { _dir: dir, store: stores.audit, raw, log, keys, key, sink, tenant: TenantId::new() }
    }

    fn trail(&self) -> String {
        self.tenant.to_string()
    }

    fn checkpointer(&self) -> Checkpointer {
        Checkpointer::new(self.store.clone(), self.key.clone(), Some(self.sink.clone() as Arc<dyn CheckpointSink>))
    }

    /// Signs and publishes checkpoints while the test runs (as the server does).
    fn checkpointing(&self) {
        tokio::spawn(self.checkpointer().run(self.log.clone(), Duration::from_millis(10), || T0));
    }

    async fn append(&self, category: Category, ts_ms: i64) -> i64 {
        let e = AuditEvent::new(Some(self.tenant), category, "x.event", Actor::system("test"), Outcome::Success);
        self.log.append(e, ts_ms).await.unwrap().seq
    }

    fn job(&self, wait_ms: u64) -> Retention<'_> {
        Retention {
            audit: &*self.store,
            log: &self.log,
            key: &self.key,
            sink: Some(&*self.sink),
            segment_records: 4,
            checkpoint_wait: Duration::from_millis(wait_ms),
        }
    }

    async fn verify(&self) -> moat_store::audit_log::VerifyReport {
        verify_trail(&*self.store, &self.keys, &self.key, Some(&*self.sink), &self.trail(), |_, _| {}).await.unwrap()
    }

    /// Waits until a checkpoint of at least `size` is stored *and* published (the checkpointer
    /// stores before it publishes; retention seals only what both cover).
    async fn wait_checkpoint(&self, size: u64) {
        let verifier = self.key.verifier(&self.trail()).unwrap();
        for _ in 0..500 {
            let stored = self.store.latest_checkpoint(&self.trail()).await.unwrap().map_or(0, |c| c.size);
            let published = self
                .sink
                .latest(&self.trail())
                .await
                .unwrap()
                .map_or(0, |note| moat_core::checkpoint::Checkpoint::parse_body(verifier.open(&note).unwrap()).unwrap().size);
            if stored.min(published) >= size {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no checkpoint of size {size}");
    }
}

fn rules() -> RetentionRules {
    RetentionRules([("auth".to_owned(), 90), ("data_access".to_owned(), 1_095)].into())
}

/// Eight old records (odd auth, even data access) in two segments, then four recent ones.
async fn history(env: &Env) {
    for i in 1..=8 {
        env.append(if i % 2 == 1 { Category::Auth } else { Category::DataAccess }, T0 + i).await;
    }
    for _ in 0..4 {
        env.append(Category::Auth, T0 + 95 * DAY_MS).await;
    }
}

#[tokio::test]
async fn records_past_retention_leave_behind_a_checkpointed_retention_record() {
    let env = Env::new().await;
    env.checkpointing();
    history(&env).await;
    env.wait_checkpoint(12).await;
    let old_checkpoint = env.store.latest_checkpoint(&env.trail()).await.unwrap().unwrap();

    // 89 days later nothing is due; at 100 days the old auth records are (data access: 3 years).
    let early = env.job(5_000).run(&env.trail(), &rules(), T0 + 89 * DAY_MS, false).await.unwrap();
    assert!(early.pruned.is_empty() && early.due.is_empty(), "{early:?}");
    let dry = env.job(5_000).run(&env.trail(), &rules(), T0 + 100 * DAY_MS, true).await.unwrap();
    assert_eq!(dry.due.iter().map(|p| (p.segment, p.records)).collect::<Vec<_>>(), vec![(0, 2), (1, 2)]);
    assert_eq!(env.store.trail_head(&env.trail()).await.unwrap().size, 12, "a dry run writes nothing");

    let run = env.job(5_000).run(&env.trail(), &rules(), T0 + 100 * DAY_MS, false).await.unwrap();
    assert_eq!(run.sealed_through, 12);
    assert_eq!(run.records_pruned(), 4);
    assert!(run.due.is_empty());
    // The segment of recent auth records (9..=12) stays; so does all data access.
    assert_eq!(env.store.category_seqs(&env.trail(), 1, 12, "auth").await.unwrap(), vec![9, 10, 11, 12]);
    assert_eq!(env.store.category_seqs(&env.trail(), 1, 12, "data_access").await.unwrap(), vec![2, 4, 6, 8]);

    // The retention records say what went, in the log itself.
    let named: Vec<_> = run.pruned.iter().map(|p| p.retention_seq.unwrap()).collect();
    assert_eq!(named, vec![13, 14]);
    let rec =
        &env.store.list(Some(env.tenant), &moat_store::AuditFilter { after_seq: Some(12), limit: 1, ..Default::default() }).await.unwrap()
            [0];
    assert_eq!((rec.action.as_str(), rec.category.as_str()), ("audit.retention", "system"));
    assert_eq!(rec.details["pruned"], "1,3");
    assert_eq!(rec.details["cutoff"], moat_core::clock::rfc3339_ms(T0 + 10 * DAY_MS));

    // The trail verifies, the old checkpoint included; proofs of removed records still work.
    let r = env.verify().await;
    assert!(r.ok, "{r:?}");
    assert_eq!((r.checked, r.pruned, r.hmacs_checked), (14, 4, 10));
    let head = env.store.trail_head(&env.trail()).await.unwrap();
    let spans = tlog::inclusion_ranges(0, old_checkpoint.size).unwrap();
    let mut ids = Vec::new();
    for s in &spans {
        tlog::nodes_of(*s, &mut ids);
    }
    ids.push(tlog::NodeId { level: 0, index: 0 });
    let nodes = env.store.nodes(&env.trail(), &ids).await.unwrap();
    let proof: Vec<_> = spans.iter().map(|s| tlog::span_hash(*s, &|id| nodes.get(&id).copied()).unwrap()).collect();
    let leaf = nodes[&tlog::NodeId { level: 0, index: 0 }];
    let old_root =
        moat_core::checkpoint::Checkpoint::parse_body(env.key.verifier(&env.trail()).unwrap().open(&old_checkpoint.note).unwrap())
            .unwrap()
            .root;
    tlog::verify_inclusion(0, old_checkpoint.size, &leaf, &proof, &old_root).unwrap();
    assert_eq!(head.size, 14);

    // A second run finds nothing new.
    let again = env.job(5_000).run(&env.trail(), &rules(), T0 + 100 * DAY_MS, false).await.unwrap();
    assert!(again.pruned.is_empty() && again.due.is_empty(), "{again:?}");
}

#[tokio::test]
async fn a_run_that_finds_no_checkpoint_removes_nothing_and_the_next_run_finishes_it() {
    let env = Env::new().await;
    history(&env).await;
    env.checkpointer().round(T0).await.unwrap();
    // No checkpointer runs while the retention records are written (and the run waits for
    // none): nothing is removed, and the trail verifies as it is.
    let run = env.job(0).run(&env.trail(), &rules(), T0 + 100 * DAY_MS, false).await.unwrap();
    assert!(run.pruned.is_empty());
    assert_eq!(run.due.len(), 2);
    assert_eq!(env.store.category_seqs(&env.trail(), 1, 8, "auth").await.unwrap(), vec![1, 3, 5, 7]);
    assert!(env.verify().await.ok);
    // The next run appends nothing new and carries out the pending prunes.
    env.checkpointing();
    env.wait_checkpoint(14).await;
    let next = env.job(5_000).run(&env.trail(), &rules(), T0 + 101 * DAY_MS, false).await.unwrap();
    assert_eq!((next.records_pruned(), env.store.trail_head(&env.trail()).await.unwrap().size), (4, 14));
    let r = env.verify().await;
    assert!(r.ok && r.pruned == 4, "{r:?}");
}

#[tokio::test]
async fn a_deletion_that_retention_did_not_name_is_found() {
    let env = Env::new().await;
    env.checkpointing();
    history(&env).await;
    env.wait_checkpoint(12).await;
    env.job(5_000).run(&env.trail(), &rules(), T0 + 100 * DAY_MS, false).await.unwrap();
    assert!(env.verify().await.ok);
    let pool = env.raw.pool();
    // The store refuses a plain delete, even of a record of a pruned category and segment.
    let refused = sqlx::query("DELETE FROM audit_log WHERE seq = 2").execute(pool).await.expect_err("trigger");
    assert!(refused.to_string().contains("only by retention"), "{refused}");
    // An attacker with the database drops the trigger, deletes a data access record and leaves
    // its leaf hash behind so the tree still adds up: the verifier names it.
    sqlx::query("DROP TRIGGER audit_log_delete_only_by_retention").execute(pool).await.unwrap();
    sqlx::query("INSERT INTO audit_nodes SELECT trail, 0, seq - 1, leaf_hash FROM audit_log WHERE seq = 6").execute(pool).await.unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq = 6").execute(pool).await.unwrap();
    let r = env.verify().await;
    assert_eq!((r.ok, r.first_bad_seq), (false, Some(6)), "{r:?}");
    assert!(r.problem.as_deref().unwrap().contains("no retention record names it"), "{r:?}");
}

#[tokio::test]
async fn a_forged_retention_record_beyond_the_signed_checkpoints_justifies_nothing() {
    // An attacker who can append (the HMAC key, no checkpoint signing key) writes a retention
    // record naming records, removes them, but cannot get it into a signed checkpoint.
    let env = Env::new().await;
    history(&env).await;
    env.checkpointer().round(T0).await.unwrap();
    let run = env.job(0).run(&env.trail(), &rules(), T0 + 100 * DAY_MS, false).await.unwrap();
    assert_eq!(run.due.len(), 2, "written, nothing removed");
    // Remove what they name by hand, as the prune would.
    for p in &run.due {
        let prune = moat_store::Prune {
            trail: env.trail(),
            retention_seq: p.retention_seq.unwrap(),
            segment: p.segment,
            first_seq: p.first_seq,
            last_seq: p.last_seq,
            category: p.category.clone(),
            count: p.records,
            ts_ms: T0,
        };
        env.store.prune(&prune).await.unwrap();
    }
    let r = env.verify().await;
    assert_eq!((r.ok, r.first_bad_seq), (false, Some(1)), "{r:?}");
    assert!(r.problem.as_deref().unwrap().contains("no signed checkpoint covers"), "{r:?}");
}
