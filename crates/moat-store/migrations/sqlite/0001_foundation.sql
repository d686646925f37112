-- Foundation schema: tenants, users, sessions, API keys, lockout counters, audit trail.
-- Times are Unix seconds (INTEGER) unless named *_ms. Ids are UUIDv7 text.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

-- tenant_id NULL = platform account (Super Admin).
CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT REFERENCES tenants(id),
    email          TEXT NOT NULL,
    role           TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    password_hash  TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX users_tenant_email ON users (COALESCE(tenant_id, 'platform'), email);

CREATE TABLE password_history (
    user_id        TEXT NOT NULL REFERENCES users(id),
    password_hash  TEXT NOT NULL,
    created_at     INTEGER NOT NULL
) STRICT;
CREATE INDEX password_history_user ON password_history (user_id, created_at);

-- Failed-login counters per (tenant slug as presented or 'platform', e-mail): kept whether or
-- not the account exists.
CREATE TABLE login_lockout (
    scope_key     TEXT NOT NULL,
    email         TEXT NOT NULL,
    failures      INTEGER NOT NULL,
    stage         INTEGER NOT NULL,
    locked_until  INTEGER,
    admin_locked  INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (scope_key, email)
) STRICT;

-- One row per login: the refresh-token family.
CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT REFERENCES tenants(id),
    user_id        TEXT NOT NULL REFERENCES users(id),
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoke_reason  TEXT,
    source_ip      TEXT,
    user_agent     TEXT
) STRICT;
CREATE INDEX sessions_user ON sessions (user_id);

-- Refresh tokens, stored as SHA-256. used_at set = rotated; presenting it again is reuse.
CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions(id),
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
) STRICT;

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT REFERENCES tenants(id),
    user_id       TEXT NOT NULL REFERENCES users(id),
    name          TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    display_hint  TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    revoked_at    INTEGER
) STRICT;
CREATE INDEX api_keys_user ON api_keys (user_id);

-- The audit trail. Per-trail sequence and hash chain; append-only (triggers below).
CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    trail       TEXT NOT NULL,           -- tenant id or 'platform'
    seq         INTEGER NOT NULL,        -- 1, 2, 3… per trail, no gaps
    ts_ms       INTEGER NOT NULL,
    category    TEXT NOT NULL,
    action      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    actor       TEXT NOT NULL,           -- JSON
    resource    TEXT,
    source_ip   TEXT,
    user_agent  TEXT,
    request_id  TEXT,
    details     TEXT NOT NULL,           -- JSON
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    UNIQUE (trail, seq)
) STRICT;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
