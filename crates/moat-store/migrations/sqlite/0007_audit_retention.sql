-- Retention: the only deletion from the audit log. A prune removes, from one sealed segment of
-- a trail, the records of one category that an `audit.retention` record (at retention_seq,
-- covered by a signed checkpoint) names. The removed records' leaf hashes move to audit_nodes
-- (level 0) first, so roots, older checkpoints and proofs keep verifying.
CREATE TABLE audit_prunes (
    trail          TEXT NOT NULL,
    retention_seq  INTEGER NOT NULL,   -- the audit.retention record that names the records
    segment        INTEGER NOT NULL,
    first_seq      INTEGER NOT NULL,   -- the segment's bounds
    last_seq       INTEGER NOT NULL,
    category       TEXT NOT NULL,
    count          INTEGER NOT NULL,   -- records removed
    ts_ms          INTEGER NOT NULL,
    PRIMARY KEY (trail, retention_seq)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER audit_prunes_no_update BEFORE UPDATE ON audit_prunes
BEGIN
    SELECT RAISE(ABORT, 'audit_prunes is append-only');
END;
CREATE TRIGGER audit_prunes_no_delete BEFORE DELETE ON audit_prunes
BEGIN
    SELECT RAISE(ABORT, 'audit_prunes is append-only');
END;

-- A record row may go only when a prune covers it (its trail, segment range, category, named by
-- a later retention record; never a retention record itself) and its leaf hash is kept.
DROP TRIGGER audit_log_no_delete;
CREATE TRIGGER audit_log_delete_only_by_retention BEFORE DELETE ON audit_log
WHEN OLD.action = 'audit.retention'
  OR NOT EXISTS (
    SELECT 1 FROM audit_prunes p
    WHERE p.trail = OLD.trail AND OLD.seq BETWEEN p.first_seq AND p.last_seq
      AND p.category = OLD.category AND p.retention_seq > OLD.seq)
  OR NOT EXISTS (
    SELECT 1 FROM audit_nodes n
    WHERE n.trail = OLD.trail AND n.level = 0 AND n.idx = OLD.seq - 1 AND n.hash = OLD.leaf_hash)
BEGIN
    SELECT RAISE(ABORT, 'audit_log rows are removed only by retention');
END;
