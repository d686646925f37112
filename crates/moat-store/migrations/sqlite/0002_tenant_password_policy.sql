-- Per-tenant password policy (JSON of moat_core::password::PasswordPolicy); NULL = the default.
ALTER TABLE tenants ADD COLUMN password_policy TEXT;
