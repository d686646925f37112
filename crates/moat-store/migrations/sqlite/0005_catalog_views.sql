-- Views: named, saved read-only queries of a tenant, queryable like tables. Their columns'
-- labels are not stored: they are derived at every use from the current labels of what they
-- read (high-water mark), so a view is never less sensitive than its inputs. Views and tables
-- share one namespace per tenant (enforced by the store, in the transaction that writes either).
CREATE TABLE catalog_views (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    name        TEXT NOT NULL,
    sql         TEXT NOT NULL,
    description TEXT NOT NULL,
    created_by  TEXT NOT NULL,           -- user id of the author
    version     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
) STRICT;
