-- Per-tenant settings as JSON documents by key ("password_policy", "masking_policy", …).
CREATE TABLE tenant_settings (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, key)
) STRICT;

-- The password policy moves here from its column.
INSERT INTO tenant_settings (tenant_id, key, value, updated_at)
    SELECT id, 'password_policy', password_policy, updated_at FROM tenants WHERE password_policy IS NOT NULL;
ALTER TABLE tenants DROP COLUMN password_policy;
