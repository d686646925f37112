-- The full-text index of the audit log moves to a database file of its own
-- (`<store>.search`), kept up to date off the commit path (moat-store `sqlite_search`); it is
-- rebuilt there from audit_log on first use. Not part of the log: nothing verifies it.
DROP TABLE audit_search;
