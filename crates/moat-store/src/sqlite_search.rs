//! The full-text index of the audit log, in a database file of its own beside the store
//! (`<store>.search.db`), kept up to date off the commit path.
//!
//! Tokenising every entry inside the audit commit halved the writer's throughput and set its
//! tail latency (FTS5 on one thread with the write lock held). The index is not part of the log
//! — verification never reads it, and it can always be rebuilt from `audit_log` — so it lives
//! in another SQLite file with its own write lock: an indexer catches it up on the other core
//! while the writer commits. Searches catch it up first, so a search always sees every record
//! committed before it started.
//!
//! One pass (`catch_up`), per trail, in one transaction that reads the store through a
//! read-only attachment (a WAL snapshot: it never blocks the writer) and writes only the index:
//! 1. forget the records of every prune since the last pass (their rows are gone from
//!    `audit_log`: delete their rowids; a rowid never indexed is a no-op);
//! 2. index the records after the trail's watermark, in seq order;
//! 3. move the watermarks (records, prunes) — in the same transaction as the index rows, so a
//!    crash loses nothing but work.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use moat_core::{MoatError, Result};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

/// Bits of a search rowid that hold the seq; the trail's number is above them.
pub(crate) const SEARCH_SEQ_BITS: u32 = 40;

/// Records indexed per transaction.
const INDEX_BATCH: i64 = 5_000;

/// Rows per multi-row INSERT.
const INSERT_CHUNK: usize = 200;

/// How often the background indexer runs.
const INDEX_EVERY: Duration = Duration::from_millis(250);

const SCHEMA: &str = "
CREATE VIRTUAL TABLE IF NOT EXISTS audit_search USING fts5(
    body,
    content = '',
    contentless_delete = 1,
    tokenize = 'unicode61 remove_diacritics 2'
);
-- Per trail: every record up to `seq` is indexed; every prune up to `prunes` is forgotten.
CREATE TABLE IF NOT EXISTS audit_indexed (
    trail   TEXT PRIMARY KEY,
    seq     INTEGER NOT NULL,
    prunes  INTEGER NOT NULL
) STRICT;
";

/// What a record is found by: the values of its entry (strings, numbers, booleans, at any
/// depth) and the keys inside `details` (free-form, so its words matter: `attempt 4`), in
/// order — not the fixed top-level keys every record repeats, nor the fields that only place
/// it (`v`, `trail`, `seq`, `ts_ms`). A third fewer tokens, and as much less indexing work.
pub(crate) fn search_text(entry: &[u8]) -> String {
    fn walk(v: &serde_json::Value, keys: bool, out: &mut String) {
        match v {
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => {
                out.push_str(s);
                out.push(' ');
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, keys, out)),
            serde_json::Value::Object(o) => {
                for (k, v) in o {
                    if keys {
                        out.push_str(k);
                        out.push(' ');
                    }
                    walk(v, keys, out);
                }
            }
            other => {
                out.push_str(&other.to_string());
                out.push(' ');
            }
        }
    }
    let Ok(serde_json::Value::Object(o)) = serde_json::from_slice::<serde_json::Value>(entry) else {
        // Not an entry that parses (verification names it): index its text as it is.
        return String::from_utf8_lossy(entry).into_owned();
    };
    let mut out = String::with_capacity(entry.len());
    for (k, v) in &o {
        if !matches!(k.as_str(), "v" | "trail" | "seq" | "ts_ms") {
            walk(v, k == "details", &mut out);
        }
    }
    out
}

/// The search index of a trail's records: a trail's rows are the rowid range
/// `[num << 40, (num + 1) << 40)`, in seq order.
pub(crate) fn search_rowid(num: i64, seq: i64) -> i64 {
    (num << SEARCH_SEQ_BITS) | seq
}

fn index_err(e: sqlx::Error) -> MoatError {
    tracing::error!(error = %e, "audit search index");
    MoatError::unavailable("search_unavailable", "the audit search index cannot be read or updated")
}

#[derive(Clone)]
pub(crate) struct SearchIndex {
    /// Connections to the index, the store attached read-only as `log`.
    pool: SqlitePool,
    /// One pass at a time in this process (two would race to upgrade to the write lock).
    passes: Arc<tokio::sync::Mutex<()>>,
}

impl SearchIndex {
    /// Opens (creating) the index beside the store at `store_path`.
    pub(crate) async fn open(store_path: &Path) -> Result<Self> {
        let mut name = store_path.as_os_str().to_owned();
        name.push(".search");
        let path = std::path::PathBuf::from(name);
        // The store, read-only (a URI: `%`, `?` and `#` in the path are escaped).
        let escaped = store_path.display().to_string().replace('%', "%25").replace('?', "%3f").replace('#', "%23");
        let log = format!("file:{escaped}?mode=ro");
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(index_err)?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Rebuildable: a crash may lose the last passes (redone), never corrupt it.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                let log = log.clone();
                Box::pin(async move {
                    sqlx::query("ATTACH DATABASE ? AS log").bind(log).execute(&mut *conn).await?;
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(|e| MoatError::unavailable("store_unavailable", format!("cannot open the search index at {}: {e}", path.display())))?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await.map_err(index_err)?;
        Ok(Self { pool, passes: Arc::new(tokio::sync::Mutex::new(())) })
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Catches the index up with the store: one trail, or every trail. Returns records indexed.
    pub(crate) async fn catch_up(&self, trail: Option<&str>) -> Result<u64> {
        let _one = self.passes.lock().await;
        let trails: Vec<String> = match trail {
            Some(t) => vec![t.to_owned()],
            None => sqlx::query_scalar("SELECT trail FROM log.audit_trails").fetch_all(&self.pool).await.map_err(index_err)?,
        };
        let mut indexed = 0;
        for t in trails {
            loop {
                let (n, more) = self.pass(&t).await?;
                indexed += n;
                if !more {
                    break;
                }
            }
        }
        Ok(indexed)
    }

    /// One transaction of one trail; whether more is left.
    async fn pass(&self, trail: &str) -> Result<(u64, bool)> {
        // IMMEDIATE: the index's write lock first (reading `log` takes a snapshot, not a lock).
        // Another handle on the same store (`moat demo` holds two) may be indexing: a deferred
        // transaction that read first could not upgrade past its commit ("database is locked");
        // this one waits for it (busy timeout), then reads what it committed.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(index_err)?;
        let Some(head) = sqlx::query("SELECT num, size FROM log.audit_trails WHERE trail = ?")
            .bind(trail)
            .fetch_optional(&mut *tx)
            .await
            .map_err(index_err)?
        else {
            return Ok((0, false));
        };
        let (num, size): (i64, i64) = (head.get("num"), head.get("size"));
        let mark = sqlx::query("SELECT seq, prunes FROM audit_indexed WHERE trail = ?")
            .bind(trail)
            .fetch_optional(&mut *tx)
            .await
            .map_err(index_err)?;
        let (done, prunes_done): (i64, i64) = mark.map_or((0, 0), |r| (r.get("seq"), r.get("prunes")));
        let prunes = sqlx::query(
            "SELECT retention_seq, first_seq, last_seq FROM log.audit_prunes WHERE trail = ? AND retention_seq > ? ORDER BY retention_seq",
        )
        .bind(trail)
        .bind(prunes_done)
        .fetch_all(&mut *tx)
        .await
        .map_err(index_err)?;
        if done >= size && prunes.is_empty() {
            return Ok((0, false));
        }
        let mut prunes_mark = prunes_done;
        for p in &prunes {
            let (first, last): (i64, i64) = (p.get("first_seq"), p.get("last_seq"));
            sqlx::query(
                "DELETE FROM audit_search WHERE rowid BETWEEN ?1 AND ?2
                 AND rowid - ?3 NOT IN (SELECT seq FROM log.audit_log WHERE trail = ?4 AND seq BETWEEN ?5 AND ?6)",
            )
            .bind(search_rowid(num, first))
            .bind(search_rowid(num, last))
            .bind(search_rowid(num, 0))
            .bind(trail)
            .bind(first)
            .bind(last)
            .execute(&mut *tx)
            .await
            .map_err(index_err)?;
            prunes_mark = prunes_mark.max(p.get("retention_seq"));
        }
        let rows = sqlx::query("SELECT seq, entry FROM log.audit_log WHERE trail = ? AND seq > ? ORDER BY seq LIMIT ?")
            .bind(trail)
            .bind(done)
            .bind(INDEX_BATCH)
            .fetch_all(&mut *tx)
            .await
            .map_err(index_err)?;
        let more = rows.len() as i64 == INDEX_BATCH;
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO audit_search (rowid, body) ");
            q.push_values(chunk, |mut b, r| {
                b.push_bind(search_rowid(num, r.get("seq"))).push_bind(search_text(&r.get::<Vec<u8>, _>("entry")));
            });
            q.build().execute(&mut *tx).await.map_err(index_err)?;
        }
        // Up to the last row read, or (everything read) the trail's size in this snapshot:
        // the seqs in between were pruned.
        let mark = if more { rows.last().map_or(done, |r| r.get("seq")) } else { size };
        sqlx::query("INSERT INTO audit_indexed (trail, seq, prunes) VALUES (?, ?, ?) ON CONFLICT (trail) DO UPDATE SET seq = excluded.seq, prunes = excluded.prunes")
            .bind(trail)
            .bind(mark.max(done))
            .bind(prunes_mark)
            .execute(&mut *tx)
            .await
            .map_err(index_err)?;
        tx.commit().await.map_err(index_err)?;
        Ok((rows.len() as u64, more))
    }

    /// Catches up every `INDEX_EVERY` until the pool closes.
    pub(crate) fn spawn(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            while !me.pool.is_closed() {
                tokio::time::sleep(INDEX_EVERY).await;
                if let Err(e) = me.catch_up(None).await {
                    if me.pool.is_closed() {
                        return;
                    }
                    tracing::warn!(code = e.code, "audit search indexing failed; retrying");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn records_are_found_by_their_values_and_the_words_of_their_details() {
        let entry = br#"{"action":"query.execute","actor":{"email":"ana@acme.example","super_admin":false},"category":"data_access","details":{"attempt":4,"sql":"SELECT 1"},"seq":17,"trail":"0192f0c4","ts_ms":1700000000000,"v":2}"#;
        let t = super::search_text(entry);
        for word in ["query.execute", "ana@acme.example", "false", "data_access", "attempt 4", "SELECT 1"] {
            assert!(t.contains(word), "{word} in {t}");
        }
        for word in ["action", "email", "category", "0192f0c4", "1700000000000", "17"] {
            assert!(!t.split(' ').any(|w| w == word), "{word} not in {t}");
        }
        // Something that is not an entry is indexed as it is.
        assert_eq!(super::search_text(b"not json"), "not json");
    }
}
