//! The store conformance suite: every backend must pass it. Each check builds its own tenants
//! (unique slugs), so suites can share one database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use moat_core::audit::{Actor, AuditEvent, AuditKeys, Category, Outcome};
use moat_core::ids::{ApiKeyId, Email, SessionId, Slug, TenantId, UserId};
use moat_core::lockout::{FailureOutcome, LockoutPolicy};
use moat_core::role::Role;

use crate::*;

const NOW: i64 = 1_800_000_000;

tokio::task_local! {
    /// Where the suite's tenants live: `None`, the store's own database; `Some`, a database of
    /// their own (`run_all_dedicated`).
    static DATABASE: Option<TenantDatabase>;
}

fn database() -> Option<TenantDatabase> {
    DATABASE.try_with(Clone::clone).ok().flatten()
}

/// Runs every check with every tenant the suite makes provisioned in `db` (a PostgreSQL store
/// routing to dedicated databases).
pub async fn run_all_dedicated(s: &Stores, db: TenantDatabase) {
    DATABASE.scope(Some(db), run_all(s)).await;
}

fn slug() -> Slug {
    Slug::parse(&format!("t{}", &TenantId::new().0.simple().to_string()[20..])).unwrap()
}

fn user(tenant: Option<TenantId>, email: &str, role: Role) -> NewUser {
    NewUser {
        id: UserId::new(),
        tenant_id: tenant,
        email: Email::parse(email).unwrap(),
        role,
        password_hash: "$argon2id$fake".into(),
        now: NOW,
    }
}

async fn tenant(s: &Stores) -> TenantRecord {
    s.meta
        .create_tenant(&NewTenant { id: TenantId::new(), slug: slug(), name: "T".into(), now: NOW, database: database() }, None)
        .await
        .unwrap()
}

/// Runs every check against `s`.
pub async fn run_all(s: &Stores) {
    tenants_and_atomic_first_admin(s).await;
    users_are_tenant_scoped(s).await;
    password_history(s).await;
    user_mfa(s).await;
    lockout_counts_atomically(s).await;
    refresh_rotation_and_reuse(s).await;
    api_keys(s).await;
    audit_log(s).await;
    audit_retention(s).await;
    catalog(s).await;
    views(s).await;
    event_cursors(s).await;
    tenant_keys(s).await;
    table_rekey(s).await;
}

/// Wrapped DEKs: versions are per tenant and made once (a second replica's insert loses), a
/// master-key rotation re-wraps, and shredding erases the wrapped bytes for good.
pub async fn tenant_keys(s: &Stores) {
    let (a, b) = (tenant(s).await, tenant(s).await);
    let key = |t: TenantId, version: u32, wrapped: &[u8]| NewTenantKey {
        tenant_id: t,
        version,
        kek: "local:kek-0001".into(),
        wrapped: wrapped.to_vec(),
        now: NOW,
    };
    assert!(s.meta.add_tenant_key(&key(a.id, 1, b"w1")).await.unwrap());
    assert!(!s.meta.add_tenant_key(&key(a.id, 1, b"other")).await.unwrap(), "a version is made once");
    assert!(s.meta.add_tenant_key(&key(a.id, 2, b"w2")).await.unwrap());
    assert!(s.meta.add_tenant_key(&key(b.id, 1, b"b1")).await.unwrap(), "versions are per tenant");
    assert!(!s.meta.add_tenant_key(&key(TenantId::new(), 1, b"x")).await.unwrap(), "no such tenant");
    let keys = s.meta.tenant_keys(a.id).await.unwrap();
    assert_eq!(
        keys.iter().map(|k| (k.version, k.wrapped.clone().unwrap())).collect::<Vec<_>>(),
        [(1, b"w1".to_vec()), (2, b"w2".to_vec())]
    );
    assert_eq!((keys[0].kek.as_str(), keys[0].created_at, keys[0].destroyed_at), ("local:kek-0001", NOW, None));
    assert!(s.meta.rewrap_tenant_key(a.id, 1, "local:kek-0002", b"w1'").await.unwrap());
    assert!(!s.meta.rewrap_tenant_key(a.id, 9, "local:kek-0002", b"x").await.unwrap(), "no such version");
    assert!(!s.meta.rewrap_tenant_key(b.id, 2, "local:kek-0002", b"x").await.unwrap(), "not through another tenant");
    let k1 = &s.meta.tenant_keys(a.id).await.unwrap()[0];
    assert_eq!((k1.kek.as_str(), k1.wrapped.as_deref()), ("local:kek-0002", Some(b"w1'".as_slice())));
    assert_eq!(s.meta.shred_tenant_keys(a.id, NOW + 9).await.unwrap(), 2);
    assert_eq!(s.meta.shred_tenant_keys(a.id, NOW + 10).await.unwrap(), 0, "already shredded");
    let shredded = s.meta.tenant_keys(a.id).await.unwrap();
    assert!(shredded.iter().all(|k| k.wrapped.is_none() && k.destroyed_at == Some(NOW + 9)), "{shredded:?}");
    assert!(!s.meta.rewrap_tenant_key(a.id, 1, "local:kek-0002", b"back").await.unwrap(), "a destroyed key stays destroyed");
    assert_eq!(
        s.meta.tenant_keys(b.id).await.unwrap()[0].wrapped.as_deref(),
        Some(b"b1".as_slice()),
        "the other tenant's key is untouched"
    );
}

/// Re-encryption swaps a table's files only while it is still at the version that was copied:
/// a replace or delete that came in meanwhile wins, and another tenant's table is out of reach.
pub async fn table_rekey(s: &Stores) {
    let (a, b) = (tenant(s).await, tenant(s).await);
    let col =
        ColumnRecord { classification: Some("confidential".into()), source: "manual".into(), ..ColumnRecord::unclassified("ssn", "Utf8") };
    let v = NewTableVersion {
        tenant_id: a.id,
        name: "people".into(),
        domain: "d".into(),
        product: "p".into(),
        location: "a/v1".into(),
        row_count: 3,
        bytes: 100,
        columns: vec![col],
        now: NOW,
        dek_version: Some(1),
    };
    let (before, _) = s.meta.put_table(&v).await.unwrap();
    let rk = |from: &str, to: &str, t: TenantId| TableRekey {
        tenant_id: t,
        name: "people".into(),
        from_location: from.into(),
        to_location: to.into(),
        dek_version: 2,
        bytes: 120,
    };
    assert!(!s.meta.rekey_table(&rk("a/v1", "b/evil", b.id)).await.unwrap(), "not through another tenant");
    assert!(!s.meta.rekey_table(&rk("a/v0", "a/v1-k2", a.id)).await.unwrap(), "not from another version");
    assert!(s.meta.rekey_table(&rk("a/v1", "a/v1-k2", a.id)).await.unwrap());
    let after = s.meta.table(a.id, "people").await.unwrap().unwrap();
    assert_eq!((after.location.as_str(), after.dek_version, after.bytes), ("a/v1-k2", Some(2), 120));
    assert_eq!((after.version, after.row_count, after.updated_at), (before.version, 3, before.updated_at), "the same data");
    assert_eq!(after.columns, before.columns, "labels stay");
    // A replace that landed while the copy was made wins.
    s.meta.put_table(&NewTableVersion { location: "a/v2".into(), ..v.clone() }).await.unwrap();
    assert!(!s.meta.rekey_table(&rk("a/v1-k2", "a/v1-k3", a.id)).await.unwrap());
    assert_eq!(s.meta.table(a.id, "people").await.unwrap().unwrap().location, "a/v2");
    s.meta.delete_table(a.id, "people").await.unwrap();
    assert!(!s.meta.rekey_table(&rk("a/v2", "a/v2-k2", a.id)).await.unwrap(), "a deleted table stays deleted");
    assert!(s.meta.table(a.id, "people").await.unwrap().is_none());
}

/// One replica at a time forwards a trail: a lease is taken, renewed by its holder, refused to
/// another until it expires; a cursor only moves forward, and only for the lease's holder.
pub async fn event_cursors(s: &Stores) {
    let t = tenant(s).await.id.to_string();
    let a = &s.audit;
    assert_eq!(a.lease_cursor("nats", &t, "r1", 1_000, 11_000, 7).await.unwrap(), Some(7), "a new cursor starts where told");
    assert_eq!(a.lease_cursor("nats", &t, "r2", 5_000, 15_000, 0).await.unwrap(), None, "held by r1");
    assert!(a.advance_cursor("nats", &t, "r1", 12).await.unwrap());
    assert!(a.advance_cursor("nats", &t, "r1", 9).await.unwrap(), "the holder may report an older seq");
    assert_eq!(a.lease_cursor("nats", &t, "r1", 6_000, 16_000, 0).await.unwrap(), Some(12), "renewed; never moved back");
    assert!(!a.advance_cursor("nats", &t, "r2", 99).await.unwrap(), "not the holder");
    assert_eq!(a.lease_cursor("nats", &t, "r2", 16_001, 26_001, 0).await.unwrap(), Some(12), "taken over after expiry");
    assert!(!a.advance_cursor("nats", &t, "r1", 50).await.unwrap(), "the old holder lost it");
    assert_eq!(a.lease_cursor("other", &t, "r1", 16_001, 26_001, 3).await.unwrap(), Some(3), "sinks are apart");
    let cursors = a.cursors("nats").await.unwrap();
    assert!(cursors.contains(&(t.clone(), 12)), "{cursors:?}");
}

pub async fn views(s: &Stores) {
    let (a, b) = (tenant(s).await, tenant(s).await);
    let v = |name: &str, sql: &str, now| NewView {
        tenant_id: a.id,
        name: name.into(),
        sql: sql.into(),
        description: "d".into(),
        created_by: "u1".into(),
        now,
    };
    let first = s.meta.put_view(&v("big_orders", "SELECT 1", NOW)).await.unwrap();
    assert_eq!((first.version, first.created_at), (1, NOW));
    let second = s.meta.put_view(&v("big_orders", "SELECT 2", NOW + 5)).await.unwrap();
    assert_eq!((second.id.as_str(), second.version, second.sql.as_str(), second.created_at), (first.id.as_str(), 2, "SELECT 2", NOW));
    assert_eq!(s.meta.list_views(a.id).await.unwrap(), vec![second.clone()]);
    assert!(s.meta.list_views(b.id).await.unwrap().is_empty(), "another tenant sees none");
    assert!(s.meta.delete_view(b.id, "big_orders").await.unwrap().is_none(), "nor deletes it");
    // Tables and views share one namespace, both ways.
    let t = NewTableVersion {
        tenant_id: a.id,
        name: "big_orders".into(),
        domain: "d".into(),
        product: "p".into(),
        location: "/x".into(),
        row_count: 0,
        bytes: 0,
        columns: vec![],
        now: NOW,
        dek_version: None,
    };
    assert_eq!(s.meta.put_table(&t).await.unwrap_err().code, "name_taken");
    s.meta.put_table(&NewTableVersion { name: "orders".into(), ..t.clone() }).await.unwrap();
    assert_eq!(s.meta.put_view(&v("orders", "SELECT 1", NOW)).await.unwrap_err().code, "name_taken");
    let mut other = v("orders", "SELECT 1", NOW);
    other.tenant_id = b.id;
    assert_eq!(s.meta.put_view(&other).await.unwrap().name, "orders", "a name is per tenant");
    assert_eq!(s.meta.delete_view(a.id, "big_orders").await.unwrap().unwrap().version, 2);
    assert!(s.meta.list_views(a.id).await.unwrap().is_empty());
    s.meta.put_table(&t).await.unwrap();
}

pub async fn catalog(s: &Stores) {
    let (a, b) = (tenant(s).await, tenant(s).await);
    let v1 = NewTableVersion {
        tenant_id: a.id,
        name: "customers".into(),
        domain: "sales".into(),
        product: "crm".into(),
        location: "/data/a/v1".into(),
        row_count: 10,
        bytes: 100,
        columns: vec![
            ColumnRecord::unclassified("id", "Int64"),
            ColumnRecord::unclassified("ssn", "Utf8"),
            ColumnRecord::unclassified("zip", "Int64"),
        ],
        now: NOW,
        dek_version: None,
    };
    let (t, prev) = s.meta.put_table(&v1).await.unwrap();
    assert_eq!((t.version, prev, t.dek_version), (1, None, None));
    let label = ColumnLabel { classification: "RESTRICTED".into(), pii: Some("direct".into()), entity: Some("ssn".into()), mask: None };
    assert_eq!(s.meta.set_column_label(a.id, "customers", "ssn", &label).await.unwrap().unwrap().source, "manual");
    assert!(s.meta.set_column_label(b.id, "customers", "ssn", &label).await.unwrap().is_none(), "not through another tenant");
    assert!(s.meta.set_column_label(a.id, "customers", "nope", &label).await.unwrap().is_none());
    // Re-upload: a manual label survives even a type change; other labels only an unchanged type.
    let mut v2 = v1.clone();
    v2.location = "/data/a/v2".into();
    v2.dek_version = Some(3);
    v2.columns = vec![
        ColumnRecord::unclassified("id", "Int64"),
        ColumnRecord::unclassified("ssn", "Int64"),
        ColumnRecord::unclassified("zip", "Utf8"),
    ];
    let (t2, prev) = s.meta.put_table(&v2).await.unwrap();
    assert_eq!((t2.version, prev.as_deref()), (2, Some("/data/a/v1")));
    let ssn = t2.columns.iter().find(|c| c.name == "ssn").unwrap();
    assert_eq!((ssn.classification.as_deref(), ssn.data_type.as_str()), (Some("RESTRICTED"), "Int64"));
    // A scan of the current version labels every column not labelled by hand.
    let scanned = |name: &str, ty: &str, label: &str| ColumnRecord {
        classification: Some(label.into()),
        pii: "direct".into(),
        confidence: Some(0.9),
        source: "scanner".into(),
        ..ColumnRecord::unclassified(name, ty)
    };
    let proposals = [scanned("ssn", "Int64", "PUBLIC"), scanned("zip", "Utf8", "CONFIDENTIAL"), scanned("nope", "Utf8", "PUBLIC")];
    let t3 = s.meta.apply_scan(a.id, "customers", 2, &proposals).await.unwrap().unwrap();
    let col = |t: &crate::TableRecord, n: &str| t.columns.iter().find(|c| c.name == n).unwrap().clone();
    assert_eq!((col(&t3, "ssn").source.as_str(), col(&t3, "ssn").classification.as_deref()), ("manual", Some("RESTRICTED")));
    assert_eq!((col(&t3, "zip").source.as_str(), col(&t3, "zip").confidence), ("scanner", Some(0.9)));
    assert_eq!(t3.columns.len(), 3, "a proposal for an unknown column adds nothing");
    assert_eq!(s.meta.apply_scan(a.id, "customers", 1, &proposals).await.unwrap_err().code, "table_changed");
    assert!(s.meta.apply_scan(b.id, "customers", 2, &proposals).await.unwrap().is_none(), "not through another tenant");
    assert_eq!(s.meta.list_tables(a.id).await.unwrap().len(), 1);
    assert!(s.meta.list_tables(b.id).await.unwrap().is_empty());
    assert!(s.meta.table(b.id, "customers").await.unwrap().is_none());
    assert!(s.meta.delete_table(b.id, "customers").await.unwrap().is_none());
    assert_eq!(s.meta.delete_table(a.id, "customers").await.unwrap().unwrap().location, "/data/a/v2");
    assert!(s.meta.table(a.id, "customers").await.unwrap().is_none());
}

pub async fn tenants_and_atomic_first_admin(s: &Stores) {
    let t = tenant(s).await;
    assert_eq!(s.meta.tenant_by_slug(&t.slug).await.unwrap().unwrap().id, t.id);
    let dup = s
        .meta
        .create_tenant(
            &NewTenant { id: TenantId::new(), slug: Slug::parse(&t.slug).unwrap(), name: "x".into(), now: NOW, database: database() },
            None,
        )
        .await;
    assert_eq!(dup.unwrap_err().code, "tenant_exists");
    // A tenant whose first admin fails leaves no tenant behind.
    let platform_admin = user(None, "dup-admin@platform.example", Role::SuperAdmin);
    s.meta.create_user(&platform_admin).await.unwrap();
    let t2 = NewTenant { id: TenantId::new(), slug: slug(), name: "T2".into(), now: NOW, database: database() };
    let mut admin = user(Some(t2.id), "a@t2.example", Role::Admin);
    admin.tenant_id = None; // collides with the platform user below
    admin.email = Email::parse("dup-admin@platform.example").unwrap();
    assert!(s.meta.create_tenant(&t2, Some(&admin)).await.is_err());
    assert!(s.meta.tenant_by_slug(t2.slug.as_str()).await.unwrap().is_none(), "rolled back");
    assert_eq!(s.meta.tenant_setting(t.id, "password_policy").await.unwrap(), None);
    assert!(s.meta.set_tenant_setting(t.id, "password_policy", r#"{"min_chars":14}"#, NOW).await.unwrap());
    assert!(s.meta.set_tenant_setting(t.id, "password_policy", r#"{"min_chars":16}"#, NOW + 1).await.unwrap());
    assert_eq!(s.meta.tenant_setting(t.id, "password_policy").await.unwrap().as_deref(), Some(r#"{"min_chars":16}"#));
    assert_eq!(s.meta.tenant_setting(t.id, "masking_policy").await.unwrap(), None);
    assert!(!s.meta.set_tenant_setting(TenantId::new(), "password_policy", "{}", NOW).await.unwrap(), "no such tenant");
    assert!(s.meta.set_tenant_status(t.id, TenantStatus::Suspended, NOW).await.unwrap());
    assert_eq!(s.meta.tenant_by_id(t.id).await.unwrap().unwrap().status, TenantStatus::Suspended);
}

pub async fn users_are_tenant_scoped(s: &Stores) {
    let (a, b) = (tenant(s).await, tenant(s).await);
    let ua = s.meta.create_user(&user(Some(a.id), "same@x.example", Role::Admin)).await.unwrap();
    let ub = s.meta.create_user(&user(Some(b.id), "same@x.example", Role::Viewer)).await.unwrap();
    assert_eq!(s.meta.create_user(&user(Some(a.id), "same@x.example", Role::User)).await.unwrap_err().code, "user_exists");
    assert!(s.meta.user_by_id(Some(b.id), ua.id).await.unwrap().is_none(), "A's user is absent in B");
    assert!(s.meta.user_by_id(None, ua.id).await.unwrap().is_none(), "and in the platform scope");
    assert_eq!(s.meta.user_by_email(Some(b.id), &ub.email).await.unwrap().unwrap().role, Role::Viewer);
    assert!(!s.meta.set_user_role(b.id, ua.id, Role::Viewer, NOW).await.unwrap(), "cannot touch A's user through B");
    assert!(!s.meta.set_user_status(Some(b.id), ua.id, UserStatus::Disabled, NOW).await.unwrap());
    assert_eq!(s.meta.list_users(Some(a.id)).await.unwrap().len(), 1);
}

pub async fn password_history(s: &Stores) {
    let t = tenant(s).await;
    let u = s.meta.create_user(&user(Some(t.id), "h@x.example", Role::User)).await.unwrap();
    for i in 0..6 {
        assert!(s.meta.set_password(Some(t.id), u.id, &format!("hash{i}"), NOW + i).await.unwrap());
    }
    let h = s.meta.password_history(Some(t.id), u.id, 5).await.unwrap();
    assert_eq!(h, vec!["hash5", "hash4", "hash3", "hash2", "hash1"]);
    let other = tenant(s).await;
    assert!(s.meta.password_history(Some(other.id), u.id, 5).await.unwrap().is_empty(), "not through another tenant");
}

/// A second factor: pending until confirmed, each change a compare-and-swap, each TOTP step
/// accepted once even by racing sign-ins, and never reachable through another tenant.
pub async fn user_mfa(s: &Stores) {
    let (t, other) = (tenant(s).await, tenant(s).await);
    let u = s.meta.create_user(&user(Some(t.id), "m@x.example", Role::User)).await.unwrap();
    let platform_email = format!("p{}@x.example", &UserId::new().0.simple().to_string()[24..]);
    let platform = s.meta.create_user(&user(None, &platform_email, Role::SuperAdmin)).await.unwrap();
    let mfa = |id| async move { s.meta.user_by_id(Some(t.id), id).await.unwrap().unwrap().mfa };
    assert_eq!(mfa(u.id).await, None);
    let set = |change| s.meta.set_mfa(Some(t.id), u.id, change, NOW);

    assert!(set(MfaChange::Enroll { sealed: b"p1" }).await.unwrap());
    assert!(set(MfaChange::Enroll { sealed: b"p2" }).await.unwrap(), "a pending factor is replaced");
    assert_eq!(mfa(u.id).await, Some(UserMfa { sealed: b"p2".to_vec(), enabled_at: None, last_step: None }));
    assert!(!set(MfaChange::UseStep { step: 5 }).await.unwrap(), "no step is accepted while pending");
    assert!(!set(MfaChange::Confirm { from: b"p1", to: b"e1", step: 10 }).await.unwrap(), "not the pending one");
    assert!(set(MfaChange::Confirm { from: b"p2", to: b"e2", step: 10 }).await.unwrap());
    assert_eq!(mfa(u.id).await, Some(UserMfa { sealed: b"e2".to_vec(), enabled_at: Some(NOW), last_step: Some(10) }));
    assert!(!set(MfaChange::Confirm { from: b"e2", to: b"e3", step: 11 }).await.unwrap(), "already enabled");
    assert!(!set(MfaChange::Enroll { sealed: b"p3" }).await.unwrap(), "no silent re-enrolment over an enabled factor");

    // Steps only move forward; of racing sign-ins with one code, exactly one wins.
    assert!(!set(MfaChange::UseStep { step: 10 }).await.unwrap());
    assert!(!set(MfaChange::UseStep { step: 9 }).await.unwrap());
    let racers: Vec<_> = (0..6).map(|_| set(MfaChange::UseStep { step: 11 })).collect();
    let won = futures::future::join_all(racers).await.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(won, 1);
    assert_eq!(mfa(u.id).await.unwrap().last_step, Some(11));

    assert!(!set(MfaChange::Replace { from: b"e1", to: b"e4" }).await.unwrap(), "stale");
    assert!(set(MfaChange::Replace { from: b"e2", to: b"e4" }).await.unwrap());
    assert_eq!(mfa(u.id).await.unwrap().sealed, b"e4");

    // Another tenant's scope, or the platform's, reaches nothing.
    for scope in [Some(other.id), None] {
        assert!(!s.meta.set_mfa(scope, u.id, MfaChange::Remove, NOW).await.unwrap());
        assert!(!s.meta.set_mfa(scope, u.id, MfaChange::Replace { from: b"e4", to: b"x" }, NOW).await.unwrap());
    }
    assert_eq!(mfa(u.id).await.unwrap().sealed, b"e4");
    // A platform account has a factor of its own.
    assert!(s.meta.set_mfa(None, platform.id, MfaChange::Enroll { sealed: b"pp" }, NOW).await.unwrap());
    assert_eq!(s.meta.user_by_id(None, platform.id).await.unwrap().unwrap().mfa.unwrap().sealed, b"pp");

    assert!(set(MfaChange::Remove).await.unwrap());
    assert_eq!(mfa(u.id).await, None);
    let listed = s.meta.list_users(Some(t.id)).await.unwrap();
    assert_eq!(serde_json::to_value(&listed[0]).unwrap()["mfa"], "off");
}

pub async fn lockout_counts_atomically(s: &Stores) {
    let p = LockoutPolicy::default();
    let key = format!("k-{}", TenantId::new());
    let mut handles = Vec::new();
    for _ in 0..5 {
        let (s, key, p) = (s.clone(), key.clone(), p.clone());
        handles.push(tokio::spawn(async move { s.meta.record_login_failure(&key, "x@y.example", &p, NOW).await.unwrap().0 }));
    }
    let mut locked = 0;
    for h in handles {
        if matches!(h.await.unwrap(), FailureOutcome::LockedFor { .. }) {
            locked += 1;
        }
    }
    assert_eq!(locked, 1, "five concurrent failures lock exactly once");
    assert_eq!(s.meta.lockout_state(&key, "x@y.example").await.unwrap().stage, 1);
    s.meta.clear_lockout(&key, "x@y.example").await.unwrap();
    assert_eq!(s.meta.lockout_state(&key, "x@y.example").await.unwrap().stage, 0);
}

pub async fn refresh_rotation_and_reuse(s: &Stores) {
    let t = tenant(s).await;
    let u = s.meta.create_user(&user(Some(t.id), "r@x.example", Role::User)).await.unwrap();
    let sid = SessionId::new();
    let ns =
        NewSession { id: sid, tenant_id: Some(t.id), user_id: u.id, now: NOW, expires_at: NOW + 86_400, source_ip: None, user_agent: None };
    s.sessions.create_session(&ns, "h1", NOW + 86_400).await.unwrap();
    assert!(s.sessions.session_auth_state(Some(t.id), sid, u.id).await.unwrap().unwrap().session_live);
    assert!(s.sessions.session_auth_state(Some(t.id), sid, UserId::new()).await.unwrap().is_none(), "session bound to its user");
    assert!(matches!(s.sessions.rotate_refresh("h1", "h2", NOW + 86_400, NOW + 1).await.unwrap(), RefreshOutcome::Rotated { .. }));
    assert!(matches!(s.sessions.rotate_refresh("h2", "h3", NOW + 86_400, NOW + 2).await.unwrap(), RefreshOutcome::Rotated { .. }));
    // h1 again: reuse, the family dies, and h3 no longer works.
    assert!(matches!(s.sessions.rotate_refresh("h1", "hx", NOW + 86_400, NOW + 3).await.unwrap(), RefreshOutcome::Reused { .. }));
    assert!(!s.sessions.session_auth_state(Some(t.id), sid, u.id).await.unwrap().unwrap().session_live);
    assert_eq!(s.sessions.rotate_refresh("h3", "h4", NOW + 86_400, NOW + 4).await.unwrap(), RefreshOutcome::Invalid);
    assert_eq!(s.sessions.rotate_refresh("nope", "h5", NOW + 86_400, NOW).await.unwrap(), RefreshOutcome::Invalid);
    // Expired refresh token.
    let sid2 = SessionId::new();
    s.sessions.create_session(&NewSession { id: sid2, ..ns }, "e1", NOW + 10).await.unwrap();
    assert_eq!(s.sessions.rotate_refresh("e1", "e2", NOW + 86_400, NOW + 11).await.unwrap(), RefreshOutcome::Invalid);
    let other = tenant(s).await;
    assert!(s.sessions.session_auth_state(Some(other.id), sid2, u.id).await.unwrap().is_none(), "not through another tenant");
    assert!(!s.sessions.revoke_session(Some(other.id), sid2, "logout", NOW).await.unwrap(), "nor revoked from it");
    assert_eq!(s.sessions.revoke_user_sessions(Some(other.id), u.id, "disabled", NOW).await.unwrap(), 0);
    assert!(s.sessions.revoke_session(Some(t.id), sid2, "logout", NOW).await.unwrap());
}

pub async fn api_keys(s: &Stores) {
    let (a, b) = (tenant(s).await, tenant(s).await);
    let u = s.meta.create_user(&user(Some(a.id), "k@x.example", Role::Editor)).await.unwrap();
    let id = ApiKeyId::new();
    let nk = NewApiKey {
        id,
        tenant_id: Some(a.id),
        user_id: u.id,
        name: "ci".into(),
        key_hash: format!("hash-{id}"),
        display_hint: "abcd".into(),
        scopes: vec!["query:execute".into()],
        now: NOW,
        expires_at: NOW + 100,
    };
    s.meta.create_api_key(&nk).await.unwrap();
    let k = s.meta.api_key_by_hash(&nk.key_hash).await.unwrap().unwrap();
    assert_eq!((k.tenant_id, k.role, k.revoked, k.tenant_active), (Some(a.id), Role::Editor, false, true));
    assert_eq!(s.meta.list_api_keys(Some(b.id), None).await.unwrap().len(), 0);
    assert!(!s.meta.revoke_api_key(Some(b.id), id, None, NOW).await.unwrap(), "not from another tenant");
    assert!(!s.meta.revoke_api_key(Some(a.id), id, Some(UserId::new()), NOW).await.unwrap(), "not someone else's key");
    assert!(s.meta.revoke_api_key(Some(a.id), id, Some(u.id), NOW).await.unwrap());
    assert!(s.meta.api_key_by_hash(&nk.key_hash).await.unwrap().unwrap().revoked);
    s.meta.set_tenant_status(a.id, TenantStatus::Suspended, NOW).await.unwrap();
    assert!(!s.meta.api_key_by_hash(&nk.key_hash).await.unwrap().unwrap().tenant_active);
}

fn login_failure(t: TenantId, i: i64) -> NewAuditEntry {
    let e = AuditEvent::new(Some(t), Category::Auth, "auth.login", Actor::anonymous(Some("a@b.example")), Outcome::Failure)
        .resource(format!("user:{i}"))
        .details(serde_json::json!({"attempt": i, "note": "quote \" and é"}));
    NewAuditEntry { event: e, ts_ms: NOW * 1000 + i, event_id: uuid::Uuid::now_v7().to_string() }
}

/// Retention at the store: planning reads (segments, seqs), a prune that keeps the leaf hashes
/// and removes rows and search entries in one transaction, exactly once, and refuses a prune
/// whose count does not match.
pub async fn audit_retention(s: &Stores) {
    use moat_core::audit_retention::{RETENTION_ACTION, RetentionDetails, SeqRanges};
    let keys = AuditKeys::new([9; 32]);
    let t = tenant(s).await;
    let trail = t.id.to_string();
    let entry = |i: i64, category: Category, ts_ms: i64| {
        let e = AuditEvent::new(Some(t.id), category, "x.event", Actor::system("test"), Outcome::Success)
            .resource(format!("thing:{i}"))
            .details(serde_json::json!({"word": format!("needle{i}")}));
        NewAuditEntry { event: e, ts_ms, event_id: uuid::Uuid::now_v7().to_string() }
    };
    // Segments of 4: seq 1..=8 old (odd auth, even data_access), 9..=12 new.
    let batch: Vec<_> = (1..=12)
        .map(|i| entry(i, if i % 2 == 1 { Category::Auth } else { Category::DataAccess }, if i <= 8 { 1_000 + i } else { 9_000 }))
        .collect();
    let leaves = s.audit.append_batch(&batch, &keys).await.unwrap();
    let plan = s.audit.segment_categories(&trail, 8, 4).await.unwrap();
    let seg0: Vec<_> = plan.iter().filter(|c| c.segment == 0).map(|c| (c.category.as_str(), c.records, c.newest_ts_ms)).collect();
    assert_eq!(seg0, vec![("auth", 2, 1_003), ("data_access", 2, 1_004)]);
    assert_eq!(plan.len(), 4, "only sealed segments: {plan:?}");
    assert_eq!(s.audit.category_seqs(&trail, 1, 4, "auth").await.unwrap(), vec![1, 3]);
    // The retention record naming them comes first.
    let mut named = SeqRanges::new();
    named.push(1);
    named.push(3);
    let details = RetentionDetails {
        segment: 0,
        first_seq: 1,
        last_seq: 4,
        category: "auth".into(),
        retention_days: 90,
        cutoff: "1970-01-01T00:00:02.000Z".into(),
        count: 2,
        pruned: named,
    };
    let e = AuditEvent::new(Some(t.id), Category::System, RETENTION_ACTION, Actor::system("retention"), Outcome::Success)
        .details(serde_json::to_value(&details).unwrap());
    let at =
        s.audit.append_batch(&[NewAuditEntry { event: e, ts_ms: 9_001, event_id: uuid::Uuid::now_v7().to_string() }], &keys).await.unwrap();
    let p = Prune {
        trail: trail.clone(),
        retention_seq: at[0].seq,
        segment: 0,
        first_seq: 1,
        last_seq: 4,
        category: "auth".into(),
        count: 2,
        ts_ms: 9_002,
    };
    // A count that does not match removes nothing.
    let wrong = Prune { count: 1, ..p.clone() };
    assert_eq!(s.audit.prune(&wrong).await.unwrap_err().code, "retention_mismatch");
    assert_eq!(s.audit.category_seqs(&trail, 1, 4, "auth").await.unwrap(), vec![1, 3]);
    assert_eq!(s.audit.prune(&p).await.unwrap(), 2);
    assert_eq!(s.audit.prune(&p).await.unwrap(), 0, "a prune happens once");
    assert_eq!(s.audit.prunes(&trail).await.unwrap(), vec![p.clone()]);
    // Rows 1 and 3 are leaf hashes now; the rest is untouched; the head did not move.
    let rows = s.audit.entries(&trail, 0, 100).await.unwrap();
    assert_eq!(rows.len(), 13);
    for r in &rows {
        let gone = r.seq == 1 || r.seq == 3;
        assert_eq!(r.pruned, gone, "seq {}", r.seq);
        assert_eq!(r.entry.is_empty(), gone);
        assert_eq!(r.leaf_hash, hex::encode(if r.seq <= 12 { leaves[r.seq as usize - 1].leaf_hash } else { at[0].leaf_hash }));
    }
    let paged: Vec<i64> = s.audit.entries(&trail, 1, 2).await.unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(paged, vec![2, 3], "pages merge rows and leaf hashes in order");
    assert_eq!(s.audit.trail_head(&trail).await.unwrap().size, 13);
    let leaf = s.audit.nodes(&trail, &[moat_core::tlog::NodeId { level: 0, index: 0 }]).await.unwrap();
    assert_eq!(leaf.values().next(), Some(&leaves[0].leaf_hash), "proofs still find the leaf");
    // Gone from search, by filter and by full text.
    let all = s.audit.list(Some(t.id), &AuditFilter { limit: 100, ..AuditFilter::default() }).await.unwrap();
    assert_eq!(all.iter().map(|r| r.seq).filter(|s| *s <= 4).collect::<Vec<_>>(), vec![2, 4]);
    let text = |w: &str| AuditFilter { q: Some(w.into()), limit: 10, ..AuditFilter::default() };
    assert!(s.audit.list(Some(t.id), &text("needle1")).await.unwrap().is_empty());
    assert_eq!(s.audit.list(Some(t.id), &text("needle2")).await.unwrap().len(), 1);
    // Planning no longer sees them; retention records are never candidates.
    let plan = s.audit.segment_categories(&trail, 16, 4).await.unwrap();
    assert!(!plan.iter().any(|c| c.segment == 0 && c.category == "auth"));
    assert!(s.audit.category_seqs(&trail, 13, 16, "system").await.unwrap().is_empty());
}

/// The transparency log: batches across trails, sequence numbers without gaps, entries that
/// verify from their bytes, nodes that yield proofs to the stored head, checkpoints, search.
pub async fn audit_log(s: &Stores) {
    use moat_core::audit_verify::{EntryView, TrailVerifier};
    use moat_core::tlog;
    let keys = AuditKeys::new([9; 32]);
    let (t, u) = (tenant(s).await, tenant(s).await);
    // Interleaved trails in one batch, then more batches.
    let mut batch = Vec::new();
    for i in 0..5 {
        batch.push(login_failure(t.id, i));
        batch.push(login_failure(u.id, i));
    }
    let recs = s.audit.append_batch(&batch, &keys).await.unwrap();
    assert_eq!(recs.iter().filter(|r| r.trail == t.id.to_string()).map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    for i in 5..23 {
        s.audit.append_batch(&[login_failure(t.id, i)], &keys).await.unwrap();
    }
    assert!(s.audit.append_batch(&[], &keys).await.unwrap().is_empty());
    let trail = t.id.to_string();
    let head = s.audit.trail_head(&trail).await.unwrap();
    assert_eq!(head.size, 23);
    assert_eq!(s.audit.trail_head("nobody").await.unwrap(), TrailHead { size: 0, root: tlog::empty_root() });
    let heads = s.audit.trail_heads().await.unwrap();
    assert!(heads.iter().any(|(n, h)| *n == trail && *h == head));

    // Every entry verifies from its bytes and HMAC; the recomputed root is the stored head.
    let mut v = TrailVerifier::new(&trail, Some(keys.trail_key(&trail)));
    let mut after = 0;
    loop {
        let page = s.audit.entries(&trail, after, 7).await.unwrap();
        let Some(last) = page.last().map(|e| e.seq) else { break };
        for e in &page {
            let (leaf, mac) = (hex::decode(&e.leaf_hash).unwrap(), hex::decode(&e.hmac).unwrap());
            v.entry(&EntryView { seq: e.seq, entry: e.entry.as_bytes(), leaf_hash: Some(&leaf), hmac: Some(&mac) }).unwrap();
            let r = AuditRecord::from_entry(e.entry.as_bytes(), &leaf).unwrap();
            assert_eq!(e.index.as_ref().unwrap().action, r.action);
        }
        after = last;
    }
    assert_eq!(v.finish().unwrap().root, head.root);

    // Proofs from stored nodes lead to the head.
    for index in [0u64, 7, 22] {
        let spans = tlog::inclusion_ranges(index, 23).unwrap();
        let mut ids = vec![tlog::NodeId { level: 0, index }];
        for sp in &spans {
            tlog::nodes_of(*sp, &mut ids);
        }
        let nodes = s.audit.nodes(&trail, &ids).await.unwrap();
        let proof: Vec<_> = spans.iter().map(|sp| tlog::span_hash(*sp, &|id| nodes.get(&id).copied()).unwrap()).collect();
        let leaf = nodes[&tlog::NodeId { level: 0, index }];
        tlog::verify_inclusion(index, 23, &leaf, &proof, &head.root).unwrap();
    }

    // Checkpoints: stored once per size, latest, paged.
    for size in [5u64, 23] {
        let cp = CheckpointRecord { trail: trail.clone(), size, ts_ms: NOW * 1000, note: format!("note {size}\n") };
        s.audit.put_checkpoint(&cp).await.unwrap();
        s.audit.put_checkpoint(&cp).await.unwrap();
    }
    assert_eq!(s.audit.latest_checkpoint(&trail).await.unwrap().unwrap().size, 23);
    assert_eq!(s.audit.checkpoints(&trail, 5, 10).await.unwrap().len(), 1);
    assert!(s.audit.latest_checkpoint(&u.id.to_string()).await.unwrap().is_none());

    // Search, scoped to the trail.
    let f = AuditFilter { resource: Some("user:3".into()), limit: 100, ..Default::default() };
    let found = s.audit.list(Some(t.id), &f).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].details["note"], "quote \" and é");
    let f = AuditFilter { action: Some("auth".into()), limit: 100, ..Default::default() };
    assert_eq!(s.audit.list(Some(t.id), &f).await.unwrap().len(), 23, "action prefix");
    let f = AuditFilter { q: Some("attempt\":4".into()), limit: 100, ..Default::default() };
    assert_eq!(s.audit.list(Some(u.id), &f).await.unwrap().len(), 1, "full text over the entry");
    assert_eq!(s.audit.list(None, &f).await.unwrap().len(), 0, "trails are separate");
    let count = |trail: Option<TenantId>, f: AuditFilter| async move { s.audit.list(trail, &AuditFilter { limit: 100, ..f }).await };
    let text = |q: &str| AuditFilter { q: Some(q.into()), ..Default::default() };
    // Words, all required; FTS5 syntax in the input is inert (words, not operators).
    assert_eq!(count(Some(t.id), text("quote AND")).await.unwrap().len(), 23);
    assert_eq!(count(Some(t.id), text("quote OR nowhere")).await.unwrap().len(), 0);
    assert_eq!(count(Some(t.id), text("NEAR( \"")).await.unwrap().len(), 0);
    assert_eq!(count(Some(t.id), text("\" * ()")).await.unwrap().len(), 0, "nothing searchable");
    assert_eq!(count(Some(t.id), text("fail*")).await.unwrap().len(), 23, "prefix");
    // Pages in seq order, with or without words.
    for q in [None, Some("quote".to_owned())] {
        let page = |after| AuditFilter { q: q.clone(), after_seq: Some(after), limit: 10, ..Default::default() };
        let seqs = |v: Vec<AuditRecord>| v.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(s.audit.list(Some(t.id), &page(0)).await.unwrap()), (1..=10).collect::<Vec<_>>());
        assert_eq!(seqs(s.audit.list(Some(t.id), &page(20)).await.unwrap()), vec![21, 22, 23]);
    }
    let by = |category: &str, outcome: &str| AuditFilter {
        category: Some(category.into()),
        outcome: Some(outcome.into()),
        ..Default::default()
    };
    assert_eq!(count(Some(t.id), by("auth", "failure")).await.unwrap().len(), 23);
    assert_eq!(count(Some(t.id), by("admin", "failure")).await.unwrap().len(), 0);
    assert_eq!(count(Some(t.id), by("auth", "success")).await.unwrap().len(), 0);
    let mixed = AuditFilter { q: Some("quote".into()), actor: Some("a@b".into()), from_ms: Some(NOW * 1000 + 20), ..by("auth", "failure") };
    assert_eq!(count(Some(t.id), mixed).await.unwrap().len(), 3, "words and columns together");
}
