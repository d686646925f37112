//! RS256 access tokens. Keys carry a `kid` and are published as a JWKS; verification is
//! explicit: RS256 only, a known `kid`, `iss`/`aud` pinned, `exp`/`nbf`/`tid`/`sub`/`sid`
//! required, `exp`/`nbf` checked against our clock with a small leeway.

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::clock::UnixSeconds;
use crate::error::MoatError;
use crate::ids::{Email, SessionId, TenantId, UserId};
use crate::principal::{Principal, Scope};
use crate::role::Role;

/// Access token lifetime (contract: `expires_in: 900`).
pub const ACCESS_TTL_S: i64 = 900;
/// Upper bound on clock skew we tolerate.
pub const MAX_LEEWAY_S: u64 = 30;
/// `tid` value of the platform (Super Admin) scope.
pub const PLATFORM_TID: &str = "platform";

/// One RSA signing key with its id.
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new RSA-2048 key; returns it with its PKCS#8 PEM for storage.
    pub fn generate() -> Result<(Self, String), MoatError> {
        use aws_lc_rs::encoding::AsDer;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|_| MoatError::internal("key_generation_failed"))?;
        let der = pair.as_der().map_err(|_| MoatError::internal("key_generation_failed"))?;
        let pem = pem_encode("PRIVATE KEY", der.as_ref());
        let kid = hex::encode(crate::secret::random_bytes::<8>()?);
        Ok((Self::from_pem(&kid, &pem)?, pem))
    }

    pub fn from_pem(kid: &str, pem: &str) -> Result<Self, MoatError> {
        let bad =
            || MoatError::new(crate::ErrorKind::Internal, "bad_signing_key", format!("signing key {kid} is not a valid RSA private key"));
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| bad())?;
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).map_err(|_| bad())?;
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::RS256);
        let decoding = DecodingKey::from_jwk(&jwk).map_err(|_| bad())?;
        Ok(Self { kid: kid.to_owned(), encoding, decoding, jwk })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The claims moat puts in an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    /// Tenant id, or `"platform"` for the Super Admin.
    pub tid: String,
    pub roles: Vec<String>,
    pub email: String,
    /// Session id: logout and refresh-reuse revoke it, and with it every access token.
    pub sid: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

/// What to put in a new access token.
#[derive(Debug, Clone)]
pub struct AccessGrant {
    pub scope: Scope,
    pub user_id: UserId,
    pub email: Email,
    pub role: Role,
    pub session_id: SessionId,
}

/// Claims that passed every check. Only [`KeySet::verify`] builds one.
#[derive(Debug, Clone)]
pub struct VerifiedAccess {
    scope: Scope,
    user_id: UserId,
    email: Email,
    session_id: SessionId,
    exp: i64,
}

impl VerifiedAccess {
    pub fn scope(&self) -> Scope {
        self.scope
    }
    pub fn user_id(&self) -> UserId {
        self.user_id
    }
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }
    pub fn expires_at(&self) -> i64 {
        self.exp
    }

    /// The principal, with the role as it is *now* in the store (a demotion takes effect at
    /// once, not when the token expires). The caller has checked that the session is live, the
    /// user active and the tenant not suspended.
    pub fn into_principal(self, current_role: Role) -> Result<Principal, MoatError> {
        Principal::for_session(self.scope, self.user_id, self.email, current_role, self.session_id).ok_or_else(invalid_token)
    }
}

fn invalid_token() -> MoatError {
    MoatError::unauthenticated("invalid_token", "the access token is invalid")
}

/// The signing keys of this deployment: the newest signs, all verify (rotation keeps old keys
/// until their last token has expired).
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<SigningKey>,
    issuer: String,
    audience: String,
    leeway_s: u64,
}

impl KeySet {
    /// `keys` ordered oldest first; the last one signs.
    pub fn new(keys: Vec<SigningKey>, issuer: &str, audience: &str, leeway_s: u64) -> Result<Self, MoatError> {
        if keys.is_empty() {
            return Err(MoatError::new(crate::ErrorKind::Internal, "no_signing_key", "no token signing key found; run `moat init`"));
        }
        Ok(Self { keys, issuer: issuer.to_owned(), audience: audience.to_owned(), leeway_s: leeway_s.min(MAX_LEEWAY_S) })
    }

    fn active(&self) -> &SigningKey {
        // Infallible: `new` refuses an empty key list and `keys` is never shrunk.
        &self.keys[self.keys.len() - 1]
    }

    pub fn issue(&self, g: &AccessGrant, now: UnixSeconds) -> Result<(String, AccessClaims), MoatError> {
        let key = self.active();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: g.user_id.to_string(),
            tid: match g.scope {
                Scope::Platform => PLATFORM_TID.to_owned(),
                Scope::Tenant(t) => t.to_string(),
            },
            roles: vec![g.role.as_str().to_owned()],
            email: g.email.to_string(),
            sid: g.session_id.to_string(),
            iat: now,
            nbf: now,
            exp: now + ACCESS_TTL_S,
            jti: uuid::Uuid::now_v7().to_string(),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(key.kid.clone());
        header.typ = Some("JWT".into());
        let token = jsonwebtoken::encode(&header, &claims, &key.encoding).map_err(|_| MoatError::internal("token_signing_failed"))?;
        Ok((token, claims))
    }

    /// Verifies signature and claims. Every failure is the same `invalid_token` to the caller;
    /// the reason is not revealed (it would help forging).
    pub fn verify(&self, token: &str, now: UnixSeconds) -> Result<VerifiedAccess, MoatError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid_token())?;
        if header.alg != Algorithm::RS256 {
            return Err(invalid_token());
        }
        let kid = header.kid.ok_or_else(invalid_token)?;
        let key = self.keys.iter().find(|k| k.kid == kid).ok_or_else(invalid_token)?;

        let mut v = Validation::new(Algorithm::RS256);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        // Time is checked below against our own clock (testable, one leeway for both bounds).
        v.validate_exp = false;
        v.validate_nbf = false;
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &v).map_err(|_| invalid_token())?;
        let c = data.claims;
        let leeway = self.leeway_s as i64;
        if now > c.exp + leeway || now + leeway < c.nbf || c.exp - c.iat > ACCESS_TTL_S {
            return Err(MoatError::unauthenticated("invalid_token", "the access token is invalid or expired"));
        }
        let scope = if c.tid == PLATFORM_TID { Scope::Platform } else { Scope::Tenant(TenantId::parse(&c.tid).ok_or_else(invalid_token)?) };
        Ok(VerifiedAccess {
            scope,
            user_id: UserId::parse(&c.sub).ok_or_else(invalid_token)?,
            email: Email::parse(&c.email).map_err(|_| invalid_token())?,
            session_id: SessionId::parse(&c.sid).ok_or_else(invalid_token)?,
            exp: c.exp,
        })
    }

    /// The public keys, for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> JwkSet {
        JwkSet { keys: self.keys.iter().map(|k| k.jwk.clone()).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use std::sync::OnceLock;

    // RSA generation is slow in debug builds: make two keys once for the whole module.
    fn pems() -> &'static (String, String) {
        static P: OnceLock<(String, String)> = OnceLock::new();
        P.get_or_init(|| {
            let a = SigningKey::generate().expect("keygen").1;
            let b = SigningKey::generate().expect("keygen").1;
            (a, b)
        })
    }

    fn keyset(pem: &str, kid: &str) -> KeySet {
        KeySet::new(vec![SigningKey::from_pem(kid, pem).expect("pem")], "moat", "moat-api", 30).expect("keyset")
    }

    fn grant() -> AccessGrant {
        AccessGrant {
            scope: Scope::Tenant(TenantId::new()),
            user_id: UserId::new(),
            email: Email::parse("a@acme.example").expect("email"),
            role: Role::Viewer,
            session_id: SessionId::new(),
        }
    }

    const NOW: i64 = 1_800_000_000;

    fn parts(t: &str) -> Vec<String> {
        t.split('.').map(str::to_owned).collect()
    }

    fn forge(header: serde_json::Value, claims: serde_json::Value, sig: &str) -> String {
        format!("{}.{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()), sig)
    }

    #[test]
    fn roundtrip() {
        let ks = keyset(&pems().0, "k1");
        let g = grant();
        let (t, claims) = ks.issue(&g, NOW).expect("issue");
        assert_eq!(claims.exp - claims.iat, 900);
        let v = ks.verify(&t, NOW + 10).expect("verify");
        assert_eq!(v.user_id(), g.user_id);
        assert_eq!(v.scope(), g.scope);
        let p = v.into_principal(Role::Viewer).expect("principal");
        assert_eq!(p.role(), Role::Viewer);
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let ks = keyset(&pems().0, "k1");
        let (t, _) = ks.issue(&grant(), NOW).expect("issue");
        assert!(ks.verify(&t, NOW + 900 + 30).is_ok(), "within leeway");
        assert!(ks.verify(&t, NOW + 900 + 31).is_err(), "expired");
        assert!(ks.verify(&t, NOW - 31).is_err(), "nbf in the future");
    }

    #[test]
    fn alg_none_is_refused() {
        let ks = keyset(&pems().0, "k1");
        let (t, claims) = ks.issue(&grant(), NOW).expect("issue");
        let c = serde_json::to_value(&claims).expect("json");
        let forged = forge(serde_json::json!({"alg": "none", "typ": "JWT", "kid": "k1"}), c, "");
        assert!(ks.verify(&forged, NOW).is_err());
        // Keep the real header, strip the signature.
        let p = parts(&t);
        assert!(ks.verify(&format!("{}.{}.", p[0], p[1]), NOW).is_err());
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        use hmac_probe::hs256;
        let ks = keyset(&pems().0, "k1");
        let (_, claims) = ks.issue(&grant(), NOW).expect("issue");
        let public = serde_json::to_vec(&ks.jwks()).expect("jwks");
        let h = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "k1"});
        let c = serde_json::to_value(&claims).expect("json");
        let signing_input = format!("{}.{}", B64.encode(h.to_string()), B64.encode(c.to_string()));
        let sig = B64.encode(hs256(&public, signing_input.as_bytes()));
        assert!(ks.verify(&format!("{signing_input}.{sig}"), NOW).is_err());
    }

    #[test]
    fn wrong_iss_aud_missing_tid_tampered() {
        let ks = keyset(&pems().0, "k1");
        let (t, claims) = ks.issue(&grant(), NOW).expect("issue");
        for other in [
            KeySet::new(vec![SigningKey::from_pem("k1", &pems().0).expect("pem")], "evil", "moat-api", 30).expect("ks"),
            KeySet::new(vec![SigningKey::from_pem("k1", &pems().0).expect("pem")], "moat", "other-aud", 30).expect("ks"),
        ] {
            assert!(other.verify(&t, NOW).is_err(), "iss/aud pinned");
        }
        // Tampered payload (role escalated, tid removed), original signature kept.
        let p = parts(&t);
        let mut c = serde_json::to_value(&claims).expect("json");
        c["roles"] = serde_json::json!(["admin"]);
        let tampered = format!("{}.{}.{}", p[0], B64.encode(c.to_string()), p[2]);
        assert!(ks.verify(&tampered, NOW).is_err());
        let mut c = serde_json::to_value(&claims).expect("json");
        c.as_object_mut().expect("object").remove("tid");
        let no_tid = format!("{}.{}.{}", p[0], B64.encode(c.to_string()), p[2]);
        assert!(ks.verify(&no_tid, NOW).is_err());
    }

    #[test]
    fn unknown_kid_and_other_deployment() {
        let ks = keyset(&pems().0, "k1");
        let other = keyset(&pems().1, "k2");
        let (t, _) = other.issue(&grant(), NOW).expect("issue");
        assert!(ks.verify(&t, NOW).is_err(), "kid of another data dir");
        // Same kid, different key: signature fails.
        let imposter = keyset(&pems().1, "k1");
        let (t, _) = imposter.issue(&grant(), NOW).expect("issue");
        assert!(ks.verify(&t, NOW).is_err());
    }

    #[test]
    fn rotation_keeps_old_keys_verifying() {
        let old = keyset(&pems().0, "k1");
        let (t_old, _) = old.issue(&grant(), NOW).expect("issue");
        let rotated = KeySet::new(
            vec![SigningKey::from_pem("k1", &pems().0).expect("pem"), SigningKey::from_pem("k2", &pems().1).expect("pem")],
            "moat",
            "moat-api",
            30,
        )
        .expect("ks");
        assert!(rotated.verify(&t_old, NOW).is_ok());
        let (t_new, _) = rotated.issue(&grant(), NOW).expect("issue");
        assert_eq!(jsonwebtoken::decode_header(&t_new).expect("hdr").kid.as_deref(), Some("k2"));
        assert_eq!(rotated.jwks().keys.len(), 2);
    }

    #[test]
    fn platform_token_cannot_become_tenant_role_and_vice_versa() {
        let ks = keyset(&pems().0, "k1");
        let mut g = grant();
        g.scope = Scope::Platform;
        g.role = Role::SuperAdmin;
        let (t, _) = ks.issue(&g, NOW).expect("issue");
        assert!(ks.verify(&t, NOW).expect("verify").into_principal(Role::Admin).is_err());
        let (t, _) = ks.issue(&grant(), NOW).expect("issue");
        assert!(ks.verify(&t, NOW).expect("verify").into_principal(Role::SuperAdmin).is_err());
    }

    /// Minimal HMAC-SHA256 for building the forged HS256 token above.
    mod hmac_probe {
        use sha2::{Digest, Sha256};
        pub fn hs256(key: &[u8], msg: &[u8]) -> Vec<u8> {
            let mut k = if key.len() > 64 { Sha256::digest(key).to_vec() } else { key.to_vec() };
            k.resize(64, 0);
            let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
            let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
            let inner = Sha256::new().chain_update(&ipad).chain_update(msg).finalize();
            Sha256::new().chain_update(&opad).chain_update(inner).finalize().to_vec()
        }
    }
}
