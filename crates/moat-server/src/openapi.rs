//! The OpenAPI 3.1 document served at `/v1/openapi.json`, built from the route table below.
//! Permissions come from the same `Action` types the handlers require, so the document cannot
//! drift from what the gate enforces; a test checks every documented route is served.

use serde_json::{Value, json};

use crate::http::extract::{Action, act};

/// One documented operation.
pub struct RouteDoc {
    pub method: &'static str,
    /// Path with `{param}` segments, as routed.
    pub path: &'static str,
    pub summary: &'static str,
    /// `None` = public; `Some("")` = any authenticated caller.
    pub permission: Option<String>,
    pub request: Option<Value>,
    pub success: u16,
}

fn perm<A: Action>() -> Option<String> {
    Some(A::PERMISSION.to_string())
}

fn obj(required: &[&str], props: Value) -> Option<Value> {
    Some(json!({"type": "object", "additionalProperties": false, "required": required, "properties": props}))
}

pub fn routes() -> Vec<RouteDoc> {
    let s = json!({"type": "string"});
    let any_user = Some(String::new());
    vec![
        RouteDoc { method: "get", path: "/healthz", summary: "Liveness", permission: None, request: None, success: 200 },
        RouteDoc {
            method: "get",
            path: "/readyz",
            summary: "Readiness: every dependency reachable",
            permission: None,
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/.well-known/jwks.json",
            summary: "Public token signing keys (RS256)",
            permission: None,
            request: None,
            success: 200,
        },
        RouteDoc { method: "get", path: "/v1/openapi.json", summary: "This document", permission: None, request: None, success: 200 },
        RouteDoc {
            method: "post",
            path: "/v1/auth/login",
            summary: "Log in; returns an access token and sets the moat_refresh cookie",
            permission: None,
            request: obj(&["email", "password"], json!({"tenant": s, "email": s, "password": s, "mfa_code": s})),
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/auth/refresh",
            summary: "Rotate the refresh cookie; new access token",
            permission: None,
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/auth/logout",
            summary: "Revoke the session",
            permission: any_user.clone(),
            request: None,
            success: 204,
        },
        RouteDoc {
            method: "get",
            path: "/v1/auth/whoami",
            summary: "The verified caller",
            permission: any_user.clone(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "put",
            path: "/v1/auth/password",
            summary: "Change one's own password (ends every session)",
            permission: any_user.clone(),
            request: obj(&["current_password", "new_password"], json!({"current_password": s, "new_password": s})),
            success: 204,
        },
        RouteDoc {
            method: "get",
            path: "/v1/auth/mfa",
            summary: "One's own second factor: off, pending or on; recovery codes left; whether the tenant requires one",
            permission: any_user.clone(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/auth/mfa",
            summary: "Enrol a TOTP factor (login session only): the key and an otpauth:// URI, pending until confirmed",
            permission: any_user.clone(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/auth/mfa/enroll",
            summary: "Enrol by password, for an account whose tenant requires a factor it lacks; confirm by logging in with mfa_code",
            permission: None,
            request: obj(&["email", "password"], json!({"tenant": s, "email": s, "password": s})),
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/auth/mfa/confirm",
            summary: "Confirm the pending factor with a code; returns ten one-time recovery codes, shown once",
            permission: any_user.clone(),
            request: obj(&["code"], json!({"code": s})),
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/auth/mfa/disable",
            summary: "Turn one's factor off with a current or recovery code (wrong codes count towards lockout)",
            permission: any_user.clone(),
            request: obj(&["code"], json!({"code": s})),
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/auth/mfa/recovery-codes",
            summary: "Replace one's recovery codes with ten new ones, given a current code (the old ones stop working)",
            permission: any_user,
            request: obj(&["code"], json!({"code": s})),
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/tenants",
            summary: "Create a tenant, optionally with its first Admin",
            permission: perm::<act::TenantCreate>(),
            request: obj(
                &["slug", "name"],
                json!({"slug": s, "name": s, "admin": {"type": "object", "properties": {"email": s, "password": s}}}),
            ),
            success: 201,
        },
        RouteDoc {
            method: "get",
            path: "/v1/tenants",
            summary: "List tenants",
            permission: perm::<act::TenantRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/tenants/{slug}",
            summary: "One tenant",
            permission: perm::<act::TenantRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "delete",
            path: "/v1/tenants/{slug}",
            summary: "Delete a tenant (`?confirm={slug}`): destroys its data keys (crypto-shredding), tables and files; it stays suspended for good",
            permission: perm::<act::TenantUpdate>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/tenants/{slug}/suspend",
            summary: "Suspend: every token and key of the tenant is refused",
            permission: perm::<act::TenantUpdate>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/tenants/{slug}/resume",
            summary: "Resume a suspended tenant (after its isolation validates)",
            permission: perm::<act::TenantUpdate>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/tenants/{slug}/validate",
            summary: "Prove the tenant's isolation in the store (audited): {passed, backend, enforced_by, checks[]}",
            permission: perm::<act::TenantRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/users",
            summary: "Create a user in the caller's tenant",
            permission: perm::<act::UserCreate>(),
            request: obj(
                &["email", "password", "role"],
                json!({"email": s, "password": s, "role": {"enum": ["admin", "editor", "user", "viewer", "auditor"]}}),
            ),
            success: 201,
        },
        RouteDoc {
            method: "get",
            path: "/v1/users",
            summary: "List the tenant's users",
            permission: perm::<act::UserRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/users/{id}",
            summary: "One user",
            permission: perm::<act::UserRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/users/{id}/disable",
            summary: "Disable a user and end their sessions",
            permission: perm::<act::UserUpdate>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/users/{id}/enable",
            summary: "Re-enable a user",
            permission: perm::<act::UserUpdate>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/users/{id}/unlock",
            summary: "Clear a login lockout",
            permission: perm::<act::UserUpdate>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "put",
            path: "/v1/users/{id}/role",
            summary: "Change a user's role",
            permission: perm::<act::UserUpdate>(),
            request: obj(&["role"], json!({"role": s})),
            success: 200,
        },
        RouteDoc {
            method: "delete",
            path: "/v1/users/{id}/mfa",
            summary: "Remove a user's second factor (a lost device) and end the user's sessions",
            permission: perm::<act::UserUpdate>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/api-keys",
            summary: "Create an API key (shown once)",
            permission: perm::<act::KeyCreate>(),
            request: obj(
                &["name", "scopes"],
                json!({"name": s, "scopes": {"type": "array", "items": s}, "expires_in_days": {"type": "integer", "minimum": 1, "maximum": 365}}),
            ),
            success: 201,
        },
        RouteDoc {
            method: "get",
            path: "/v1/api-keys",
            summary: "List one's API keys (?all=true: the tenant's, needs key:manage)",
            permission: perm::<act::KeyRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "delete",
            path: "/v1/api-keys/{id}",
            summary: "Revoke an API key",
            permission: perm::<act::KeyRevoke>(),
            request: None,
            success: 204,
        },
        RouteDoc {
            method: "get",
            path: "/v1/audit/events",
            summary: "Search the tenant's audit trail (actor, category, action, outcome, resource, from, to, q = full-text words, limit, after)",
            permission: perm::<act::AuditRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/audit/verify",
            summary: "Verify the trail: leaf hashes, HMACs, Merkle root, signed and published checkpoints (Accept: application/x-ndjson streams progress)",
            permission: perm::<act::AuditVerify>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/audit/checkpoint",
            summary: "The trail's latest signed checkpoint (C2SP signed note) and its verifier key",
            permission: perm::<act::AuditRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/audit/export",
            summary: "The trail as an export bundle (moat-audit-bundle/v1 NDJSON: header, signed checkpoints, records) for offline verification",
            permission: perm::<act::AuditRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/audit/reports/{kind}",
            summary: "An audit report (kind = access, admin, failed or exports) for a period (from, to; default the last 30 days) as format = json, csv or parquet",
            permission: perm::<act::AuditRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/audit/stream",
            summary: "The trail's records after seq `after` as NDJSON (optional `category`); `follow=true` stays open for new records (heartbeat lines after 15 s of quiet); at least once, resume by seq",
            permission: perm::<act::AuditRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/audit/prune",
            summary: "Run audit retention over every trail now (dry_run=true: only report what is due); each removal is named by an audit.retention record covered by a signed checkpoint",
            permission: perm::<act::AuditPrune>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/audit/proof/inclusion",
            summary: "RFC 9162 inclusion proof of record `seq` in the latest signed checkpoint",
            permission: perm::<act::AuditRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/audit/proof/consistency",
            summary: "RFC 9162 consistency proof from size `from` to `to` (default: the latest signed checkpoint)",
            permission: perm::<act::AuditRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/keys",
            summary: "The tenant's data-key versions, tables under the current key, re-encryption progress (never key material)",
            permission: perm::<act::EncryptionRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/keys/rotate",
            summary: "Rotate the tenant's data key: a new version; its tables are re-encrypted in the background while queries keep working",
            permission: perm::<act::EncryptionRotate>(),
            request: None,
            success: 202,
        },
        RouteDoc {
            method: "post",
            path: "/v1/keys/rotate-master",
            summary: "Rotate the master key: a new one in the key provider; every tenant's data keys are re-wrapped under it (no file is rewritten)",
            permission: perm::<act::EncryptionRotateMaster>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/tables",
            summary: "The tenant's tables with their columns' labels",
            permission: perm::<act::TableRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/tables/{table}",
            summary: "One table",
            permission: perm::<act::TableRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "put",
            path: "/v1/tables/{table}",
            summary: "Create or replace a table from a text/csv or application/vnd.apache.parquet body (?domain, product, types), or link a relation of the tenant's PostgreSQL schema with application/json {\"postgres\": {\"relation\": …}}; scanned for PII",
            permission: perm::<act::TableWrite>(),
            request: None,
            success: 201,
        },
        RouteDoc {
            method: "delete",
            path: "/v1/tables/{table}",
            summary: "Drop a table (a linked relation stays in PostgreSQL)",
            permission: perm::<act::TableDelete>(),
            request: None,
            success: 204,
        },
        RouteDoc {
            method: "put",
            path: "/v1/tables/{table}/columns/{column}",
            summary: "Label a column by hand (a manual label always wins over the scanner)",
            permission: perm::<act::TableClassify>(),
            request: obj(&["classification"], json!({"classification": s, "pii": s, "entity": s, "mask": s})),
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/tables/{table}/scan",
            summary: "Run the PII scanner now (?dry_run, sample_rows); Accept: application/x-ndjson streams progress",
            permission: perm::<act::TableClassify>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "post",
            path: "/v1/query",
            summary: "Run one read-only SQL statement through the governed path (JSON; Accept text/csv or Arrow streams)",
            permission: perm::<act::QueryExecute>(),
            request: obj(&["sql"], json!({"sql": s})),
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/views",
            summary: "The tenant's views with their columns' derived labels",
            permission: perm::<act::TableRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/views/{view}",
            summary: "One view",
            permission: perm::<act::TableRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "put",
            path: "/v1/views/{view}",
            summary: "Create or replace a view (a saved read-only query)",
            permission: perm::<act::TableWrite>(),
            request: obj(&["sql"], json!({"sql": s, "description": s})),
            success: 201,
        },
        RouteDoc {
            method: "delete",
            path: "/v1/views/{view}",
            summary: "Drop a view",
            permission: perm::<act::TableDelete>(),
            request: None,
            success: 204,
        },
        RouteDoc {
            method: "get",
            path: "/v1/policies/password",
            summary: "The tenant's password policy",
            permission: perm::<act::PolicyRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "put",
            path: "/v1/policies/password",
            summary: "Replace the tenant's password policy",
            permission: perm::<act::PolicyUpdate>(),
            request: Some(json!({"type": "object"})),
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/policies/mfa",
            summary: "The tenant's MFA policy: whom sign-in asks for a second factor",
            permission: perm::<act::PolicyRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "put",
            path: "/v1/policies/mfa",
            summary: "Replace the tenant's MFA policy",
            permission: perm::<act::PolicyUpdate>(),
            request: obj(&[], json!({"required_for": {"type": "string", "enum": ["optional", "admins", "everyone"]}})),
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/policies/audit-retention",
            summary: "The tenant's audit retention policy (min_days, days per category; 0 = forever)",
            permission: perm::<act::PolicyRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "put",
            path: "/v1/policies/audit-retention",
            summary: "Replace the tenant's audit retention policy; it can only lengthen the deployment's retention",
            permission: perm::<act::PolicyUpdate>(),
            request: Some(json!({"type": "object"})),
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/policies/masking",
            summary: "The tenant's masking policy (a mask per role:LABEL)",
            permission: perm::<act::PolicyRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "put",
            path: "/v1/policies/masking",
            summary: "Replace the tenant's masking policy",
            permission: perm::<act::PolicyUpdate>(),
            request: obj(&[], json!({"rules": {"type": "object", "additionalProperties": s}})),
            success: 200,
        },
        RouteDoc {
            method: "get",
            path: "/v1/policies/classification",
            summary: "The tenant's classification policy (scanner proposals to labels and masks)",
            permission: perm::<act::PolicyRead>(),
            request: None,
            success: 200,
        },
        RouteDoc {
            method: "put",
            path: "/v1/policies/classification",
            summary: "Replace the tenant's classification policy",
            permission: perm::<act::PolicyUpdate>(),
            request: obj(
                &[],
                json!({"labels": {"type": "object", "additionalProperties": s}, "masks": {"type": "object", "additionalProperties": s}, "min_confidence": {"type": "number", "minimum": 0, "maximum": 1}}),
            ),
            success: 200,
        },
    ]
}

pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for r in routes() {
        let mut op = json!({
            "summary": r.summary,
            "responses": {
                r.success.to_string(): {"description": "success"},
                "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        match &r.permission {
            None => op["security"] = json!([]),
            Some(p) if !p.is_empty() => op["x-moat-permission"] = json!(p),
            Some(_) => {}
        }
        if let Some(schema) = &r.request {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema}}});
        }
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            op["parameters"] = json!(params);
        }
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "moat", "version": env!("CARGO_PKG_VERSION"), "description": "Multi-tenant security and governance gateway for analytical data"},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "access token (JWT) or moat_sk_live_ API key"}},
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}}
        }
    })
}
