//! Random secrets and their stored form. Secrets (refresh tokens, API keys) are 256-bit OS
//! randomness; only their SHA-256 is stored, so a database dump yields nothing usable.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::error::MoatError;

/// `N` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], MoatError> {
    let mut buf = [0u8; N];
    // No fallback: without OS randomness we cannot mint secrets, so we refuse.
    getrandom::fill(&mut buf).map_err(|_| MoatError::internal("rng_unavailable"))?;
    Ok(buf)
}

/// A 256-bit random token, base64url without padding (43 characters).
pub fn random_token() -> Result<String, MoatError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

/// Lower-case hex SHA-256: the stored form of a high-entropy secret.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Constant-time equality for secrets and digests.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn tokens_are_long_and_distinct() {
        let (a, b) = (random_token().expect("rng"), random_token().expect("rng"));
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(ct_eq(b"x", b"x") && !ct_eq(b"x", b"y") && !ct_eq(b"x", b"xx"));
    }
}
