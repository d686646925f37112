-- moat on PostgreSQL: the platform schema `moat`, owned by the migration role (store.admin_url).
-- The runtime role (store.url) owns nothing here; it gets the privileges granted after the
-- migrations (see postgres.rs, GRANTS) and sees rows only through the policies below.
--
-- Row-level security: every tenant-scoped table has a policy on its tenant column, FORCEd so
-- that even the owner is bound. The scope comes from the transaction setting `app.tenant_id`
-- (set with SET LOCAL semantics at the start of every transaction):
--   * a tenant id → that tenant's rows only;
--   * 'platform'  → every row (platform operations: tenant lookup by slug, API key and refresh
--                   token lookup by hash before the tenant is known, the checkpointer);
--   * missing, empty or anything else → no row at all (never every row).

CREATE FUNCTION moat.current_tenant() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN s ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN s::uuid END
    FROM (SELECT current_setting('app.tenant_id', true) AS s) AS setting
$$;

CREATE FUNCTION moat.platform_scope() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(current_setting('app.tenant_id', true) = 'platform', false)
$$;

CREATE TABLE moat.tenants (
    id          uuid PRIMARY KEY,
    slug        text NOT NULL UNIQUE,
    name        text NOT NULL,
    status      text NOT NULL CHECK (status IN ('active', 'suspended')),
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL
);

CREATE TABLE moat.users (
    id             uuid PRIMARY KEY,
    tenant_id      uuid REFERENCES moat.tenants(id),
    email          text NOT NULL,
    role           text NOT NULL,
    status         text NOT NULL CHECK (status IN ('active', 'disabled')),
    password_hash  text NOT NULL,
    created_at     bigint NOT NULL,
    updated_at     bigint NOT NULL
);
CREATE UNIQUE INDEX users_tenant_email ON moat.users (coalesce(tenant_id::text, 'platform'), email);

CREATE TABLE moat.password_history (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      uuid REFERENCES moat.tenants(id),
    user_id        uuid NOT NULL REFERENCES moat.users(id),
    password_hash  text NOT NULL,
    created_at     bigint NOT NULL
);
CREATE INDEX password_history_user ON moat.password_history (user_id, created_at);

-- Keyed by the tenant slug as presented (which may name no tenant) or 'platform': platform state.
CREATE TABLE moat.login_lockout (
    scope_key     text NOT NULL,
    email         text NOT NULL,
    failures      bigint NOT NULL,
    stage         bigint NOT NULL,
    locked_until  bigint,
    admin_locked  boolean NOT NULL,
    updated_at    bigint NOT NULL,
    PRIMARY KEY (scope_key, email)
);

CREATE TABLE moat.sessions (
    id             uuid PRIMARY KEY,
    tenant_id      uuid REFERENCES moat.tenants(id),
    user_id        uuid NOT NULL REFERENCES moat.users(id),
    created_at     bigint NOT NULL,
    expires_at     bigint NOT NULL,
    revoked_at     bigint,
    revoke_reason  text,
    source_ip      text,
    user_agent     text
);
CREATE INDEX sessions_user ON moat.sessions (user_id);

CREATE TABLE moat.refresh_tokens (
    token_hash  text PRIMARY KEY,
    tenant_id   uuid REFERENCES moat.tenants(id),
    session_id  uuid NOT NULL REFERENCES moat.sessions(id),
    issued_at   bigint NOT NULL,
    expires_at  bigint NOT NULL,
    used_at     bigint
);

CREATE TABLE moat.api_keys (
    id            uuid PRIMARY KEY,
    tenant_id     uuid REFERENCES moat.tenants(id),
    user_id       uuid NOT NULL REFERENCES moat.users(id),
    name          text NOT NULL,
    key_hash      text NOT NULL UNIQUE,
    display_hint  text NOT NULL,
    scopes        text NOT NULL,
    created_at    bigint NOT NULL,
    expires_at    bigint NOT NULL,
    last_used_at  bigint,
    revoked_at    bigint
);
CREATE INDEX api_keys_user ON moat.api_keys (user_id);

CREATE TABLE moat.tenant_settings (
    tenant_id   uuid NOT NULL REFERENCES moat.tenants(id),
    key         text NOT NULL,
    value       text NOT NULL,
    updated_at  bigint NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

CREATE TABLE moat.catalog_tables (
    id          text PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES moat.tenants(id),
    name        text NOT NULL,
    domain      text NOT NULL,
    product     text NOT NULL,
    version     bigint NOT NULL,
    location    text NOT NULL,
    row_count   bigint NOT NULL,
    bytes       bigint NOT NULL,
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE moat.catalog_columns (
    table_id        text NOT NULL REFERENCES moat.catalog_tables(id) ON DELETE CASCADE,
    tenant_id       uuid NOT NULL REFERENCES moat.tenants(id),
    ordinal         bigint NOT NULL,
    name            text NOT NULL,
    data_type       text NOT NULL,
    classification  text,
    pii             text NOT NULL,
    entity          text,
    confidence      double precision,
    source          text NOT NULL,
    mask            text,
    PRIMARY KEY (table_id, name)
);
CREATE INDEX catalog_columns_tenant ON moat.catalog_columns (tenant_id, table_id, ordinal);

CREATE TABLE moat.catalog_views (
    id          text PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES moat.tenants(id),
    name        text NOT NULL,
    sql         text NOT NULL,
    description text NOT NULL,
    created_by  text NOT NULL,
    version     bigint NOT NULL,
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL,
    UNIQUE (tenant_id, name)
);

-- The audit trail: one RFC 6962 log per trail (a tenant id, or 'platform').
CREATE TABLE moat.audit_log (
    trail       text NOT NULL,
    seq         bigint NOT NULL,
    ts_ms       bigint NOT NULL,
    event_id    text NOT NULL UNIQUE,
    category    text NOT NULL,
    action      text NOT NULL,
    outcome     text NOT NULL,
    actor       text NOT NULL,
    resource    text,
    entry       bytea NOT NULL,
    leaf_hash   bytea NOT NULL,
    hmac        bytea NOT NULL,
    search      tsvector NOT NULL,
    PRIMARY KEY (trail, seq)
);
CREATE INDEX audit_log_ts ON moat.audit_log (trail, ts_ms);
CREATE INDEX audit_log_action ON moat.audit_log (trail, action text_pattern_ops, seq);
CREATE INDEX audit_log_resource ON moat.audit_log (trail, resource, seq);
CREATE INDEX audit_log_search ON moat.audit_log USING gin (search);

CREATE TABLE moat.audit_nodes (
    trail   text NOT NULL,
    level   smallint NOT NULL,
    idx     bigint NOT NULL,
    hash    bytea NOT NULL,
    PRIMARY KEY (trail, level, idx)
);

-- The sequencer: appends to a trail lock its row (one writer per trail, whatever the replica).
CREATE TABLE moat.audit_trails (
    trail     text PRIMARY KEY,
    size      bigint NOT NULL,
    frontier  bytea NOT NULL
);

CREATE TABLE moat.audit_checkpoints (
    trail   text NOT NULL,
    size    bigint NOT NULL,
    ts_ms   bigint NOT NULL,
    note    text NOT NULL,
    PRIMARY KEY (trail, size)
);

CREATE TABLE moat.audit_prunes (
    trail          text NOT NULL,
    retention_seq  bigint NOT NULL,
    segment        bigint NOT NULL,
    first_seq      bigint NOT NULL,
    last_seq       bigint NOT NULL,
    category       text NOT NULL,
    count          bigint NOT NULL,
    ts_ms          bigint NOT NULL,
    PRIMARY KEY (trail, retention_seq)
);

-- Append-only, enforced by the database whatever the role.
CREATE FUNCTION moat.append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON moat.audit_log FOR EACH ROW EXECUTE FUNCTION moat.append_only();
CREATE TRIGGER audit_nodes_no_change BEFORE UPDATE OR DELETE ON moat.audit_nodes FOR EACH ROW EXECUTE FUNCTION moat.append_only();
CREATE TRIGGER audit_checkpoints_no_change BEFORE UPDATE OR DELETE ON moat.audit_checkpoints FOR EACH ROW EXECUTE FUNCTION moat.append_only();
CREATE TRIGGER audit_prunes_no_change BEFORE UPDATE OR DELETE ON moat.audit_prunes FOR EACH ROW EXECUTE FUNCTION moat.append_only();
CREATE TRIGGER audit_trails_no_delete BEFORE DELETE ON moat.audit_trails FOR EACH ROW EXECUTE FUNCTION moat.append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON moat.audit_log FOR EACH STATEMENT EXECUTE FUNCTION moat.append_only();
CREATE TRIGGER audit_nodes_no_truncate BEFORE TRUNCATE ON moat.audit_nodes FOR EACH STATEMENT EXECUTE FUNCTION moat.append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON moat.audit_checkpoints FOR EACH STATEMENT EXECUTE FUNCTION moat.append_only();
CREATE TRIGGER audit_prunes_no_truncate BEFORE TRUNCATE ON moat.audit_prunes FOR EACH STATEMENT EXECUTE FUNCTION moat.append_only();
CREATE TRIGGER audit_trails_no_truncate BEFORE TRUNCATE ON moat.audit_trails FOR EACH STATEMENT EXECUTE FUNCTION moat.append_only();

CREATE FUNCTION moat.audit_trails_grow_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.size < OLD.size OR NEW.trail <> OLD.trail THEN
        RAISE EXCEPTION 'audit_trails only grow' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_trails_grow_only BEFORE UPDATE ON moat.audit_trails FOR EACH ROW EXECUTE FUNCTION moat.audit_trails_grow_only();

-- The only deletion: retention, for rows a prune record covers and whose leaf hash was kept.
CREATE FUNCTION moat.audit_log_delete_only_by_retention() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.action = 'audit.retention'
       OR NOT EXISTS (
           SELECT 1 FROM moat.audit_prunes p
           WHERE p.trail = OLD.trail AND OLD.seq BETWEEN p.first_seq AND p.last_seq
             AND p.category = OLD.category AND p.retention_seq > OLD.seq)
       OR NOT EXISTS (
           SELECT 1 FROM moat.audit_nodes n
           WHERE n.trail = OLD.trail AND n.level = 0 AND n.idx = OLD.seq - 1 AND n.hash = OLD.leaf_hash)
    THEN
        RAISE EXCEPTION 'audit_log rows are removed only by retention' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
END
$$;
CREATE TRIGGER audit_log_delete_only_by_retention BEFORE DELETE ON moat.audit_log
    FOR EACH ROW EXECUTE FUNCTION moat.audit_log_delete_only_by_retention();

-- Row-level security, FORCEd (binds the owner too).
ALTER TABLE moat.tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON moat.tenants
    USING (moat.platform_scope() OR id = moat.current_tenant())
    WITH CHECK (moat.platform_scope());
ALTER TABLE moat.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON moat.users
    USING (moat.platform_scope() OR tenant_id = moat.current_tenant());
ALTER TABLE moat.password_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.password_history FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON moat.password_history
    USING (moat.platform_scope() OR tenant_id = moat.current_tenant());
ALTER TABLE moat.sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON moat.sessions
    USING (moat.platform_scope() OR tenant_id = moat.current_tenant());
ALTER TABLE moat.refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.refresh_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON moat.refresh_tokens
    USING (moat.platform_scope() OR tenant_id = moat.current_tenant());
ALTER TABLE moat.api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON moat.api_keys
    USING (moat.platform_scope() OR tenant_id = moat.current_tenant());
ALTER TABLE moat.tenant_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.tenant_settings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON moat.tenant_settings
    USING (moat.platform_scope() OR tenant_id = moat.current_tenant());
ALTER TABLE moat.catalog_tables ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.catalog_tables FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON moat.catalog_tables
    USING (moat.platform_scope() OR tenant_id = moat.current_tenant());
ALTER TABLE moat.catalog_columns ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.catalog_columns FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON moat.catalog_columns
    USING (moat.platform_scope() OR tenant_id = moat.current_tenant());
ALTER TABLE moat.catalog_views ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.catalog_views FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON moat.catalog_views
    USING (moat.platform_scope() OR tenant_id = moat.current_tenant());
ALTER TABLE moat.login_lockout ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.login_lockout FORCE ROW LEVEL SECURITY;
CREATE POLICY platform_scope ON moat.login_lockout USING (moat.platform_scope());
ALTER TABLE moat.audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY trail_scope ON moat.audit_log
    USING (moat.platform_scope() OR trail = moat.current_tenant()::text);
ALTER TABLE moat.audit_nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.audit_nodes FORCE ROW LEVEL SECURITY;
CREATE POLICY trail_scope ON moat.audit_nodes
    USING (moat.platform_scope() OR trail = moat.current_tenant()::text);
ALTER TABLE moat.audit_trails ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.audit_trails FORCE ROW LEVEL SECURITY;
CREATE POLICY trail_scope ON moat.audit_trails
    USING (moat.platform_scope() OR trail = moat.current_tenant()::text);
ALTER TABLE moat.audit_checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.audit_checkpoints FORCE ROW LEVEL SECURITY;
CREATE POLICY trail_scope ON moat.audit_checkpoints
    USING (moat.platform_scope() OR trail = moat.current_tenant()::text);
ALTER TABLE moat.audit_prunes ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.audit_prunes FORCE ROW LEVEL SECURITY;
CREATE POLICY trail_scope ON moat.audit_prunes
    USING (moat.platform_scope() OR trail = moat.current_tenant()::text);
