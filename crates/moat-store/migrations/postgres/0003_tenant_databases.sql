-- A tenant may live in a database of its own (enterprise tenants): the platform's row then
-- only routes to it (the runtime role's URL and the owner role's, never a password). A tenant's
-- route is fixed at provisioning: the runtime role may change a tenant's status, never where
-- its data lives.
ALTER TABLE moat.tenants ADD COLUMN database_url text, ADD COLUMN database_admin_url text;
ALTER TABLE moat.tenants ADD CONSTRAINT tenant_database_both
    CHECK ((database_url IS NULL) = (database_admin_url IS NULL));
REVOKE UPDATE ON moat.tenants FROM PUBLIC;
