-- The audit trail becomes a transparency log: per trail an RFC 6962 Merkle tree over canonical
-- entries, an HMAC per entry under a key the database never holds, signed checkpoints.
-- The v1 hash-chained table is kept (read-only) and its records are carried into the log at
-- start-up, once, in their order.
ALTER TABLE audit_events RENAME TO audit_events_v1;

-- One row per record. `entry` is the truth (the exact bytes the leaf and HMAC cover); the other
-- columns are an index over it for search, and verification checks that they agree.
CREATE TABLE audit_log (
    trail       TEXT NOT NULL,           -- tenant id or 'platform'
    seq         INTEGER NOT NULL,        -- 1, 2, 3… per trail, no gaps; leaf index = seq - 1
    ts_ms       INTEGER NOT NULL,
    event_id    TEXT NOT NULL,
    category    TEXT NOT NULL,
    action      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    actor       TEXT NOT NULL,           -- JSON, for search
    resource    TEXT,
    entry       BLOB NOT NULL,
    leaf_hash   BLOB NOT NULL,
    hmac        BLOB NOT NULL,
    PRIMARY KEY (trail, seq)
) STRICT, WITHOUT ROWID;
CREATE INDEX audit_log_ts ON audit_log (trail, ts_ms);
CREATE INDEX audit_log_action ON audit_log (trail, action, seq);
CREATE INDEX audit_log_resource ON audit_log (trail, resource, seq);
CREATE UNIQUE INDEX audit_log_event ON audit_log (event_id);

-- Completed Merkle nodes (level ≥ 1) of each trail: proofs in O(log n) lookups.
CREATE TABLE audit_nodes (
    trail   TEXT NOT NULL,
    level   INTEGER NOT NULL,
    idx     INTEGER NOT NULL,
    hash    BLOB NOT NULL,
    PRIMARY KEY (trail, level, idx)
) STRICT, WITHOUT ROWID;

-- Where each trail stands: size and the roots of its perfect subtrees (concatenated hashes).
-- `num` numbers the trails for the search index (rowid = num << 40 | seq).
CREATE TABLE audit_trails (
    trail     TEXT PRIMARY KEY,
    num       INTEGER NOT NULL UNIQUE,
    size      INTEGER NOT NULL,
    frontier  BLOB NOT NULL
) STRICT;

-- Full-text search over the entries (FTS5, contentless: only the index is stored). Not part of
-- the log — verification never reads it — and rebuildable from audit_log. A trail's rows are the
-- rowid range [num << 40, (num + 1) << 40), in seq order, so a search reads one trail's range
-- in order and stops at its page.
CREATE VIRTUAL TABLE audit_search USING fts5(
    body,
    content = '',
    contentless_delete = 1,
    tokenize = 'unicode61 remove_diacritics 2'
);

-- Every signed checkpoint, in the C2SP signed-note text that was published.
CREATE TABLE audit_checkpoints (
    trail   TEXT NOT NULL,
    size    INTEGER NOT NULL,
    ts_ms   INTEGER NOT NULL,
    note    TEXT NOT NULL,
    PRIMARY KEY (trail, size)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_nodes_no_update BEFORE UPDATE ON audit_nodes
BEGIN
    SELECT RAISE(ABORT, 'audit_nodes is append-only');
END;
CREATE TRIGGER audit_nodes_no_delete BEFORE DELETE ON audit_nodes
BEGIN
    SELECT RAISE(ABORT, 'audit_nodes is append-only');
END;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;
-- A trail only grows.
CREATE TRIGGER audit_trails_grow_only BEFORE UPDATE ON audit_trails
WHEN NEW.size < OLD.size OR NEW.trail <> OLD.trail OR NEW.num <> OLD.num
BEGIN
    SELECT RAISE(ABORT, 'audit_trails only grow');
END;
CREATE TRIGGER audit_trails_no_delete BEFORE DELETE ON audit_trails
BEGIN
    SELECT RAISE(ABORT, 'audit_trails is append-only');
END;
