//! Command-line grammar.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "moat", version, about = "Multi-tenant security and governance gateway for analytical data")]
pub struct Cli {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Server URL for client commands (default: the one `moat login` used, else http://127.0.0.1:8080).
    #[arg(long, global = true, env = "MOAT_CLI_SERVER")]
    pub server: Option<String>,
    /// Act inside this tenant (Super Admin only; adds ?tenant=SLUG).
    #[arg(long = "in-tenant", global = true, value_name = "SLUG")]
    pub in_tenant: Option<String>,
    /// Why you are doing this (e.g. a ticket); recorded with every audit record of the command
    /// and shown in the admin-actions and exports reports.
    #[arg(long, global = true, env = "MOAT_JUSTIFICATION", value_name = "TEXT")]
    pub justification: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct DataDirArg {
    /// Data directory.
    #[arg(long, default_value = "./moat-data", env = "MOAT_DATA_DIR")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a data dir: config, embedded store, master key, token signing keys.
    Init {
        #[command(flatten)]
        dir: DataDirArg,
        /// Also make a self-signed certificate (localhost) and switch TLS on for HTTP and
        /// pgwire; for development (clients trust it with MOAT_CA_CERT / sslrootcert).
        #[arg(long)]
        self_signed: bool,
    },
    /// Platform Super Admin accounts (offline, on the data dir).
    Superadmin {
        #[command(subcommand)]
        cmd: SuperadminCmd,
    },
    /// Run the gateway.
    Serve {
        #[command(flatten)]
        dir: DataDirArg,
        /// HTTP listen address (default 127.0.0.1:8080).
        #[arg(long)]
        http: Option<SocketAddr>,
        /// PostgreSQL wire protocol listen address (default 127.0.0.1:6432).
        #[arg(long)]
        pg: Option<SocketAddr>,
    },
    /// Initialise if needed, seed demo tenants and users, print their logins, and serve.
    Demo {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        http: Option<SocketAddr>,
        #[arg(long)]
        pg: Option<SocketAddr>,
    },
    /// Token signing keys (offline, on the data dir).
    SigningKey {
        #[command(subcommand)]
        cmd: SigningKeyCmd,
    },
    /// Encrypted, integrity-checked backups of a data dir: store, audit trail, table files
    /// (offline, on the host; `create` runs beside a serving server).
    Backup {
        #[command(subcommand)]
        cmd: BackupCmd,
    },
    /// Log in and store the session (0600) for the other commands.
    Login {
        /// Tenant slug; omit for the platform Super Admin.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        email: String,
        /// Read the password from standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        /// The code from your authenticator app (or a recovery code); prompted for when the
        /// account needs one and a terminal is attached.
        #[arg(long)]
        mfa_code: Option<String>,
    },
    /// Your second factor (TOTP authenticator app, recovery codes); an Admin's reset of another
    /// account's.
    Mfa {
        #[command(subcommand)]
        cmd: MfaCmd,
    },
    /// End the stored session.
    Logout,
    /// Show who the stored session is.
    Whoami,
    /// Tenants (Super Admin).
    Tenant {
        #[command(subcommand)]
        cmd: TenantCmd,
    },
    /// Users of the current tenant (Admin).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Your API keys; the tenant's data-encryption keys (status, rotation) and the master key.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// Run a read-only SQL query through the governed path.
    Query {
        sql: String,
        /// table (default), csv or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// The tenant's tables.
    Table {
        #[command(subcommand)]
        cmd: TableCmd,
    },
    /// Label a column by hand (Admin); a manual label always wins over the scanner.
    Classify {
        table: String,
        column: String,
        /// PUBLIC, INTERNAL, CONFIDENTIAL or RESTRICTED.
        #[arg(long)]
        classification: String,
        /// direct, quasi, derived or none.
        #[arg(long)]
        pii: Option<String>,
        /// e.g. email, ssn, person_name, phone, credit_card.
        #[arg(long)]
        entity: Option<String>,
        /// hash16, last_four, redact, email_partial, full or omit.
        #[arg(long)]
        mask: Option<String>,
    },
    /// Views: saved read-only queries, queryable like tables; their columns carry the labels of
    /// what they read.
    View {
        #[command(subcommand)]
        cmd: ViewCmd,
    },
    /// Run the PII scanner on one table or on every table of the tenant (Admin), with
    /// progress; labels every column not labelled by hand unless --dry-run.
    Scan {
        /// Only this table (default: every table).
        #[arg(long)]
        table: Option<String>,
        /// Show the proposals without changing any label.
        #[arg(long)]
        dry_run: bool,
        /// Rows to sample per table (default: the server's scan.sample_rows).
        #[arg(long)]
        sample_rows: Option<usize>,
    },
    /// The tenant's policies (Admin): password, masking, classification.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// The tenant's audit trail (Admin, Auditor).
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum SuperadminCmd {
    /// Create the first (or another) Super Admin.
    Create {
        #[arg(long)]
        email: String,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        dir: DataDirArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum SigningKeyCmd {
    /// Retire the current signing key and create a new one (restart servers to use it).
    Rotate {
        #[command(flatten)]
        dir: DataDirArg,
    },
}

#[derive(Debug, Args, Clone)]
pub struct BackupKeyArg {
    /// The backup key file (from `moat backup keygen`; owner-only).
    #[arg(long, env = "MOAT_BACKUP_KEY_FILE")]
    pub key_file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Make a backup key file (0600). Keep it off this host: a backup and its key together
    /// open every tenant's data in that backup.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Write an archive of the data dir: the store (one snapshot; on PostgreSQL, a logical dump
    /// of schema moat per database), every tenant's current table files, its data keys
    /// re-wrapped under the backup key, audit and token signing keys. The master key is never
    /// archived.
    Create {
        /// The archive to write (a new file).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        key: BackupKeyArg,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Authenticate an archive whole and show what it holds.
    Verify {
        archive: PathBuf,
        #[command(flatten)]
        key: BackupKeyArg,
    },
    /// Restore an archive into an empty data dir; the tenants' data keys are wrapped under the
    /// master key that dir's configuration names (a new key file, or the configured HSM). An
    /// archive of a PostgreSQL store loads into a database that holds no moat data.
    Restore {
        archive: PathBuf,
        #[command(flatten)]
        key: BackupKeyArg,
        #[command(flatten)]
        dir: DataDirArg,
        /// PostgreSQL: the database to restore into, as the runtime role (store.url; written
        /// into the restored moat.toml). Default: the archived configuration's.
        #[arg(long)]
        store_url: Option<String>,
        /// PostgreSQL: that database's owner role, which loads it (store.admin_url).
        #[arg(long)]
        store_admin_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    Create {
        slug: String,
        #[arg(long)]
        name: String,
        /// E-mail of the tenant's first Admin (password read from standard input).
        #[arg(long)]
        admin_email: Option<String>,
        /// A PostgreSQL database of the tenant's own (runtime role; no password in the URL:
        /// PGPASSFILE or ~/.pgpass on every replica). Needs --database-admin-url.
        #[arg(long, requires = "database_admin_url")]
        database_url: Option<String>,
        /// The owner role of that database, which migrates it and provisions the tenant there.
        #[arg(long, requires = "database_url")]
        database_admin_url: Option<String>,
    },
    List,
    Suspend {
        slug: String,
    },
    Resume {
        slug: String,
    },
    /// Delete a tenant for good: its data keys are destroyed (its files, and every copy of
    /// them, become unreadable), its tables removed; its audit trail stays.
    Delete {
        slug: String,
        /// The slug again, to confirm.
        #[arg(long)]
        confirm: String,
    },
    /// Prove the tenant's isolation in the store (audited); exits non-zero when a check fails.
    Validate {
        slug: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MfaCmd {
    /// Whether your account has a second factor, and whether your tenant requires one.
    Status,
    /// Enrol a new factor: prints the key and an otpauth:// URI for your authenticator app.
    /// Logged in, it enrols your account; with --email (and --tenant) it signs in by password
    /// first, for an account whose tenant requires a factor it does not have yet.
    Enroll {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Confirm the enrolled factor with the code the app shows; prints your recovery codes once.
    Confirm { code: String },
    /// Replace your recovery codes with ten new ones (needs a current code); prints them once.
    RecoveryCodes {
        #[arg(long)]
        code: String,
    },
    /// Turn your factor off (needs a current code or a recovery code).
    Disable {
        #[arg(long)]
        code: String,
    },
    /// Remove another account's factor (Admin; by id or e-mail) and end its sessions.
    Reset { user: String },
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user (password read from standard input, or prompted).
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        password_stdin: bool,
    },
    List,
    /// Disable an account (by id or e-mail) and end its sessions.
    Disable {
        user: String,
    },
    Enable {
        user: String,
    },
    /// Clear a login lockout.
    Unlock {
        user: String,
    },
    SetRole {
        user: String,
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create an API key; the key is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// A permission such as query:execute (repeat for several).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    List {
        /// Every key of the tenant (needs key:manage).
        #[arg(long)]
        all: bool,
    },
    Revoke {
        id: String,
    },
    /// The tenant's data-encryption keys: versions, the master key wrapping them, tables not
    /// yet under the current key, re-encryption progress (Admin; Super Admin with --tenant).
    Status {
        /// The tenant (Super Admin; same as --in-tenant).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Rotate the tenant's data-encryption key: a new version; its tables are re-encrypted in
    /// the background while queries keep working (Admin; Super Admin with --tenant).
    Rotate {
        /// The tenant (Super Admin; same as --in-tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// Follow the re-encryption with a progress bar until it is done.
        #[arg(long)]
        wait: bool,
    },
    /// Rotate the master key (Super Admin): a new one in the key provider, every tenant's data
    /// keys re-wrapped under it; no file is rewritten.
    RotateMaster,
}

#[derive(Debug, Subcommand)]
pub enum TableCmd {
    /// Import a CSV (header row) or Parquet file as a table, replacing an existing one atomically.
    Import {
        file: PathBuf,
        #[arg(long)]
        table: String,
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        product: Option<String>,
        /// Type override COLUMN:TYPE (text, int, double, bool, date, timestamp); repeatable.
        #[arg(long = "type")]
        types: Vec<String>,
    },
    /// Register a table or view of the tenant's own PostgreSQL schema (`tenant_<uuid>`) as a
    /// table, read in place through the governed path (PostgreSQL store only).
    Link {
        table: String,
        /// The relation's name in the tenant's schema.
        #[arg(long)]
        postgres: String,
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        product: Option<String>,
    },
    List,
    /// Columns and their classification.
    Show {
        table: String,
    },
    /// Delete a table (a linked relation itself stays in PostgreSQL).
    Delete {
        table: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ViewCmd {
    List,
    /// A view's SQL and its columns with their derived labels.
    Show {
        name: String,
    },
    /// Create or replace a view (Editor+).
    Save {
        name: String,
        /// One read-only statement (SELECT, WITH or VALUES).
        #[arg(long)]
        sql: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Print a policy as JSON.
    Show {
        /// password, mfa, masking, classification or audit-retention.
        name: String,
    },
    /// Replace a policy with the JSON in FILE (`-` for standard input).
    Set {
        /// password, mfa, masking, classification or audit-retention.
        name: String,
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Search events.
    Events {
        /// Substring of the actor (email, user id).
        #[arg(long)]
        actor: Option<String>,
        /// auth, authz, data_access, admin, agent or system.
        #[arg(long)]
        category: Option<String>,
        /// An action or its prefix (`query` matches `query.run`).
        #[arg(long)]
        action: Option<String>,
        /// success, failure or denied.
        #[arg(long)]
        outcome: Option<String>,
        #[arg(long)]
        resource: Option<String>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// Full text: words that must all occur (any field); `word*` for a prefix.
        #[arg(long)]
        q: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Verify the trail: every record's leaf hash and HMAC, the Merkle root, every signed
    /// checkpoint and the published one (progress bar). With --bundle: offline, on an export.
    Verify(VerifyArgs),
    /// A report for auditors over a period: `access` (who read or wrote what, from where),
    /// `admin` (changes, by whom, with their justification), `failed` (refused attempts per
    /// actor and address, with attack patterns), `exports` (what left as a file).
    Report {
        /// access, admin, failed or exports.
        kind: String,
        /// Start (RFC 3339 or Unix ms; default 30 days before --to).
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive (default now).
        #[arg(long)]
        to: Option<String>,
        /// table (default, on the terminal), csv, json or parquet (parquet needs --out).
        #[arg(long, default_value = "table")]
        format: String,
        /// Write the report to this file instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Print the trail's records after a sequence number, one per line (with --json, the
    /// records as NDJSON, for a SIEM forwarder); --follow keeps printing new ones as they are
    /// committed. Resume with --after = the last seq you processed.
    Tail {
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Only this category.
        #[arg(long)]
        category: Option<String>,
        /// Keep the stream open.
        #[arg(long, short)]
        follow: bool,
    },
    /// Download the trail as an export bundle (records, signed checkpoints, verifier key) for
    /// offline verification.
    Export {
        /// File to write (NDJSON).
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Print a trail's HMAC key (offline, on the data dir), to hand to an auditor who checks
    /// HMACs with `verify --bundle --hmac-key-file`.
    HmacKey {
        /// The trail: a tenant id (a bundle's `trail`) or `platform`.
        trail: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Run audit retention now over every trail (Super Admin): removes, from sealed segments,
    /// the records of each category older than its retention, each removal named by an
    /// `audit.retention` record that a signed checkpoint covers first. The server also runs it
    /// every `audit.retention_interval_s`.
    Prune {
        /// Only show what is due.
        #[arg(long)]
        dry_run: bool,
    },
    /// The latest signed checkpoint (C2SP signed note) and the verifier key to pin.
    Checkpoint,
    /// Proofs against the latest signed checkpoint.
    Proof {
        #[command(subcommand)]
        cmd: ProofCmd,
    },
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Verify this export bundle offline instead of asking the server.
    #[arg(long, value_name = "FILE", conflicts_with = "data_dir")]
    pub bundle: Option<PathBuf>,
    /// Verify the store of this data dir directly (offline, on the host; works while the server
    /// is down or refusing writes): every trail, or the one named by --trail.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// With --data-dir: a tenant slug or id, or `platform`.
    #[arg(long, requires = "data_dir")]
    pub trail: Option<String>,
    /// The verifier key to pin (`name+keyid+base64`, from `moat audit checkpoint`); without it
    /// the bundle's own key is used and the result says so.
    #[arg(long, requires = "bundle", value_name = "VKEY")]
    pub key: Option<String>,
    /// A checkpoint obtained elsewhere (the published file, a witness's copy) that the bundle
    /// must agree with; repeatable.
    #[arg(long = "checkpoint", requires = "bundle", value_name = "FILE")]
    pub checkpoints: Vec<PathBuf>,
    /// File holding the trail's HMAC key in hex (`moat audit hmac-key`), to check every HMAC.
    #[arg(long, requires = "bundle", value_name = "FILE")]
    pub hmac_key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ProofCmd {
    /// That record SEQ is in the log (RFC 9162 inclusion proof).
    Inclusion { seq: i64 },
    /// That the log of FROM records is a prefix of today's (RFC 9162 consistency proof).
    Consistency {
        from: u64,
        /// Newer size (a checkpoint's); the latest checkpoint when absent.
        #[arg(long)]
        to: Option<u64>,
    },
}
