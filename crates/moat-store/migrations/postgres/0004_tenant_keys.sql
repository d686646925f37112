-- Encryption at rest: every tenant's data-encryption keys (DEKs), wrapped by a master key the
-- database never holds, one row per version. Crypto-shredding erases `wrapped` and keeps the row.
CREATE TABLE moat.tenant_keys (
    tenant_id    uuid NOT NULL REFERENCES moat.tenants(id),
    version      integer NOT NULL CHECK (version > 0),
    kek          text NOT NULL,
    wrapped      bytea,
    created_at   bigint NOT NULL,
    destroyed_at bigint,
    PRIMARY KEY (tenant_id, version),
    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL))
);
ALTER TABLE moat.tenant_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.tenant_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON moat.tenant_keys
    USING (moat.platform_scope() OR tenant_id = moat.current_tenant());

-- A destroyed key stays destroyed (the runtime role may not delete rows at all).
CREATE FUNCTION moat.tenant_keys_stay_destroyed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.destroyed_at IS NOT NULL THEN
        RAISE EXCEPTION 'tenant key destroyed';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tenant_keys_stay_destroyed BEFORE UPDATE ON moat.tenant_keys
    FOR EACH ROW EXECUTE FUNCTION moat.tenant_keys_stay_destroyed();

-- The DEK version a table version's files are encrypted under (NULL: plaintext).
ALTER TABLE moat.catalog_tables ADD COLUMN dek_version integer;
