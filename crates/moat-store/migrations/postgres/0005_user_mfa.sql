-- Multi-factor sign-in: each account's second factor (TOTP key and recovery-code digests),
-- sealed under the tenant's data key (the platform's own key for platform accounts) and never
-- stored in the clear; pending until confirmed with a code (mfa_enabled_at NULL). The last
-- accepted TOTP step is swapped atomically, so a code is accepted once.
ALTER TABLE moat.users ADD COLUMN mfa_secret bytea;
ALTER TABLE moat.users ADD COLUMN mfa_enabled_at bigint;
ALTER TABLE moat.users ADD COLUMN mfa_last_step bigint;
