-- Encryption at rest: every tenant's data-encryption keys (DEKs), wrapped by a master key the
-- database never holds, one row per version. Crypto-shredding erases `wrapped` and keeps the row.
CREATE TABLE tenant_keys (
    tenant_id    TEXT NOT NULL REFERENCES tenants(id),
    version      INTEGER NOT NULL CHECK (version > 0),
    kek          TEXT NOT NULL,
    wrapped      BLOB,
    created_at   INTEGER NOT NULL,
    destroyed_at INTEGER,
    PRIMARY KEY (tenant_id, version),
    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL))
) STRICT;

-- A destroyed key stays destroyed, and no key row is ever deleted.
CREATE TRIGGER tenant_keys_stay_destroyed BEFORE UPDATE ON tenant_keys
    WHEN OLD.destroyed_at IS NOT NULL
    BEGIN SELECT RAISE(ABORT, 'tenant key destroyed'); END;
CREATE TRIGGER tenant_keys_no_delete BEFORE DELETE ON tenant_keys
    BEGIN SELECT RAISE(ABORT, 'tenant keys are never deleted'); END;

-- The DEK version a table version's files are encrypted under (NULL: plaintext).
ALTER TABLE catalog_tables ADD COLUMN dek_version INTEGER;
