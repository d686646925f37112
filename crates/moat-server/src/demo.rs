//! `moat demo`: tenants `acme` and `globex`, each with an Admin, an Editor (analyst) and a
//! Viewer, plus a platform Super Admin. Idempotent: the generated password is kept in
//! `demo.json` (0600) so every start prints the same logins.

use moat_core::audit::{Actor, AuditEvent, Category, Outcome};
use moat_core::clock::UnixSeconds;
use moat_core::ids::{Email, Slug, TenantId, UserId};
use moat_core::password::hash_password;
use moat_core::role::Role;
use moat_core::{MoatError, Result};
use moat_store::audit_log::append_one;
use moat_store::{NewTenant, NewUser};
use serde::{Deserialize, Serialize};

use crate::bootstrap::{load_config, write_secret_file};
use crate::config::DataDir;

pub const DEMO_TENANTS: [(&str, &str); 2] = [("acme", "Acme Corporation"), ("globex", "Globex Corporation")];
pub const DEMO_USERS: [(&str, Role); 4] =
    [("admin", Role::Admin), ("analyst", Role::Editor), ("viewer", Role::Viewer), ("auditor", Role::Auditor)];
pub const DEMO_SUPER_ADMIN: &str = "superadmin@moat.example";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoCredentials {
    pub password: String,
    pub super_admin: String,
    /// (tenant slug, [(email, role)]).
    pub tenants: Vec<(String, Vec<(String, String)>)>,
}

fn demo_password() -> Result<String> {
    let bytes = moat_core::secret::random_bytes::<9>()?;
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzACDEFGHJKLMNPQRSTUVWXYZ";
    let word: String = bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect();
    // Fixed parts guarantee the policy's character classes whatever the random part is.
    Ok(format!("Demo-{word}-{}7!", bytes[0] % 10))
}

/// Seeds the demo accounts if they are not there yet; returns the logins.
pub async fn seed(dir: &DataDir, now: UnixSeconds) -> Result<DemoCredentials> {
    // The credentials file is written first: a seed interrupted half-way resumes with the same
    // password instead of leaving accounts nobody knows the password of.
    let path = dir.root.join("demo.json");
    let io = |e: String| MoatError::new(moat_core::ErrorKind::Internal, "io_error", format!("{}: {e}", path.display()));
    let password = if path.exists() {
        let text = std::fs::read(&path).map_err(|e| io(e.to_string()))?;
        serde_json::from_slice::<DemoCredentials>(&text).map_err(|e| io(e.to_string()))?.password
    } else {
        let password = demo_password()?;
        let creds = DemoCredentials { password: password.clone(), super_admin: DEMO_SUPER_ADMIN.into(), tenants: listing() };
        let bytes = serde_json::to_vec_pretty(&creds).map_err(|_| MoatError::internal("encode"))?;
        write_secret_file(&path, &bytes)?;
        password
    };
    let cfg = load_config(dir)?;
    let stores = moat_store::open_with(&cfg.store_url(&dir.root), cfg.store.admin_url.as_deref()).await?;
    let keys = crate::bootstrap::audit_keys(dir)?;
    let hash = hash_password(&password)?;
    let system = || Actor::system("demo");
    let sa = Email::parse(DEMO_SUPER_ADMIN)?;
    if stores.meta.user_by_email(None, &sa).await?.is_none() {
        let id = UserId::new();
        stores
            .meta
            .create_user(&NewUser { id, tenant_id: None, email: sa, role: Role::SuperAdmin, password_hash: hash.clone(), now })
            .await?;
        let e = AuditEvent::new(None, Category::Admin, "superadmin.create", system(), Outcome::Success).resource(format!("user:{id}"));
        append_one(&*stores.audit, &keys, e, now * 1000).await?;
    }
    for (slug, name) in DEMO_TENANTS {
        let tenant = match stores.meta.tenant_by_slug(slug).await? {
            Some(t) => t,
            None => {
                let t = stores
                    .meta
                    .create_tenant(
                        &NewTenant { id: TenantId::new(), slug: Slug::parse(slug)?, name: name.into(), now, database: None },
                        None,
                    )
                    .await?;
                let e = AuditEvent::new(Some(t.id), Category::Admin, "tenant.create", system(), Outcome::Success)
                    .resource(format!("tenant:{slug}"));
                append_one(&*stores.audit, &keys, e, now * 1000).await?;
                t
            }
        };
        for (local, role) in DEMO_USERS {
            let email = Email::parse(&format!("{local}@{slug}.example"))?;
            if stores.meta.user_by_email(Some(tenant.id), &email).await?.is_none() {
                let id = UserId::new();
                stores
                    .meta
                    .create_user(&NewUser { id, tenant_id: Some(tenant.id), email: email.clone(), role, password_hash: hash.clone(), now })
                    .await?;
                let e = AuditEvent::new(Some(tenant.id), Category::Admin, "user.create", system(), Outcome::Success)
                    .resource(format!("user:{id}"))
                    .details(serde_json::json!({"email": email, "role": role}));
                append_one(&*stores.audit, &keys, e, now * 1000).await?;
            }
        }
    }
    let tables = moat_query::TableStorage::local(&cfg.table_data_dir(&dir.root))?;
    let data_keys = crate::dek::DataKeys::new(
        crate::keyprovider::open(dir, &cfg.keys)?,
        stores.meta.clone(),
        crate::bootstrap::platform_secret_key(dir)?,
    );
    for (i, (slug, _)) in DEMO_TENANTS.iter().enumerate() {
        let tenant = stores.meta.tenant_by_slug(slug).await?.ok_or_else(|| MoatError::internal("demo_tenant_missing"))?;
        if stores.meta.table(tenant.id, "customers").await?.is_none() {
            seed_customers(&stores, &keys, &data_keys, &tables, tenant.id, 0x5eed_0000 + i as u64, now).await?;
        }
    }
    Ok(DemoCredentials { password, super_admin: DEMO_SUPER_ADMIN.into(), tenants: listing() })
}

/// What the scanner must find in the demo table (nobody labels it by hand; a test checks).
pub const CUSTOMER_LABELS: &[(&str, &str, &str, Option<&str>)] = &[
    ("id", "INTERNAL", "none", None),
    ("name", "CONFIDENTIAL", "direct", Some("person_name")),
    ("email", "CONFIDENTIAL", "direct", Some("email")),
    ("phone", "CONFIDENTIAL", "direct", Some("phone")),
    ("ssn", "RESTRICTED", "direct", Some("ssn")),
    ("zip", "CONFIDENTIAL", "quasi", Some("zip")),
    ("birth_date", "CONFIDENTIAL", "quasi", Some("birth_date")),
    ("credit_score", "CONFIDENTIAL", "derived", Some("credit_score")),
    ("plan", "INTERNAL", "none", None),
    ("signup_date", "INTERNAL", "none", None),
];

/// 1,000 deterministic synthetic customers (`customers(id, name, email, phone, ssn, zip,
/// birth_date, credit_score, plan, signup_date)`); `seed` makes each tenant's rows different.
pub fn customers_csv(seed: u64) -> String {
    const FIRST: &[&str] = &[
        "Ava", "Ben", "Chloe", "Daniel", "Emma", "Felix", "Grace", "Hugo", "Isla", "Jack", "Kira", "Liam", "Maya", "Noah", "Olivia",
        "Paul", "Quinn", "Rosa", "Sam", "Tara",
    ];
    const LAST: &[&str] = &[
        "Adams", "Baker", "Clark", "Diaz", "Evans", "Fischer", "Garcia", "Hughes", "Ito", "Jones", "Khan", "Lopez", "Moreau", "Nakamura",
        "Olsen", "Patel", "Rossi", "Smith", "Tanaka", "Weber",
    ];
    const PLANS: &[&str] = &["free", "pro", "team", "enterprise"];
    const DOMAINS: &[&str] = &["example.com", "mail.example", "corp.example", "inbox.example"];
    let mut x = seed | 1;
    let mut next = move || {
        // xorshift64*: deterministic, no dependency.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut out = String::from("id,name,email,phone,ssn,zip,birth_date,credit_score,plan,signup_date\n");
    for id in 1..=1000u64 {
        let (f, l) = (FIRST[(next() % 20) as usize], LAST[(next() % 20) as usize]);
        let area = 100 + next() % 565; // never 000, 666 or 9xx
        let (group, serial) = (1 + next() % 99, 1 + next() % 9999);
        let zip = next() % 100_000;
        let (by, bm, bd) = (1950 + next() % 55, 1 + next() % 12, 1 + next() % 28);
        let (sy, sm, sd) = (2018 + next() % 8, 1 + next() % 12, 1 + next() % 28);
        out.push_str(&format!(
            "{id},{f} {l},{}.{}{}@{},+1-555-{:03}-{:04},{area:03}-{group:02}-{serial:04},{zip:05},{by}-{bm:02}-{bd:02},{},{},{sy}-{sm:02}-{sd:02}\n",
            f.to_lowercase(),
            l.to_lowercase(),
            id,
            DOMAINS[(next() % 4) as usize],
            next() % 1000,
            next() % 10_000,
            300 + next() % 551,
            PLANS[(next() % 4) as usize],
        ));
    }
    out
}

async fn seed_customers(
    stores: &moat_store::Stores,
    keys: &moat_core::audit::AuditKeys,
    data_keys: &crate::dek::DataKeys,
    tables: &moat_query::TableStorage,
    tenant: TenantId,
    seed: u64,
    now: UnixSeconds,
) -> Result<()> {
    use crate::tables::{ImportRequest, Upload, commit_version, import_async};
    let csv = customers_csv(seed);
    let req = ImportRequest {
        tenant,
        table: "customers".into(),
        domain: "sales".into(),
        product: "crm".into(),
        type_overrides: Default::default(),
        now,
        // Classified by the scanner alone, like any upload.
        scan: Some(crate::scan::Scanner { options: crate::scan::ScanConfig::default().options(now), ..Default::default() }),
        keys: Some(data_keys.keyring(tenant, &[], now).await?),
    };
    let upload = Upload::Csv(Box::new(std::io::Cursor::new(csv.into_bytes())));
    let imported = import_async(tables.clone(), req.clone(), upload, Default::default()).await?;
    commit_version(stores, tables, &req, &imported).await?;
    let report = &imported.report;
    let e = AuditEvent::new(Some(tenant), Category::DataAccess, "table.write", Actor::system("demo"), Outcome::Success)
        .resource("table:customers")
        .details(serde_json::json!({"rows": report.rows, "version": 1, "scan": imported.scan.as_ref().map(|s| s.to_json())}));
    append_one(&*stores.audit, keys, e, now * 1000).await?;
    Ok(())
}

/// The demo logins, tenant by tenant.
fn listing() -> Vec<(String, Vec<(String, String)>)> {
    DEMO_TENANTS
        .iter()
        .map(|(slug, _)| {
            (slug.to_string(), DEMO_USERS.iter().map(|(l, r)| (format!("{l}@{slug}.example"), r.as_str().to_owned())).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo table comes out classified by the scanner alone, exactly as documented.
    #[test]
    fn the_scanner_alone_classifies_the_demo_table() {
        use datafusion::arrow::csv::ReaderBuilder;
        use datafusion::arrow::csv::reader::Format;
        let csv = customers_csv(0x5eed_0000);
        let (schema, _) = Format::default().with_header(true).infer_schema(std::io::Cursor::new(csv.as_bytes()), None).expect("schema");
        let schema = std::sync::Arc::new(schema);
        let scanner = crate::scan::Scanner { options: crate::scan::ScanConfig::default().options(1_790_000_000), ..Default::default() };
        let mut sample = crate::scan::TableSample::new(&schema, scanner.options.sample_rows, 1);
        for b in ReaderBuilder::new(schema.clone()).with_header(true).build(std::io::Cursor::new(csv.as_bytes())).expect("reader") {
            sample.observe(&b.expect("batch"));
        }
        let report = sample.scan(&scanner);
        for (col, label, pii, entity) in CUSTOMER_LABELS {
            let rec = report.column_record(col, "Utf8");
            assert_eq!(
                (rec.classification.as_deref(), rec.pii.as_str(), rec.entity.as_deref()),
                (Some(*label), *pii, *entity),
                "{col}: {:?}",
                report.columns.iter().find(|c| c.name == *col).map(|c| &c.proposal.reason)
            );
        }
        assert_eq!(report.quasi_identifiers, ["zip", "birth_date"]);
        assert_eq!(report.k_anonymity, Some(1), "zip + birth date single people out");
    }
}
