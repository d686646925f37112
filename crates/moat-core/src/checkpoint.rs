//! Signed checkpoints of an audit log: a C2SP `tlog-checkpoint` body (origin, tree size, root)
//! in a C2SP `signed-note` envelope with an Ed25519 signature, so that any signed-note
//! implementation (Go's `sumdb/note`, the `signed_note` crate, a witness) verifies them.
//!
//! ```text
//! moat.example/audit/0192f0c4-…      origin: deployment / trail
//! 1042                                tree size
//! mZ3k…base64 root…=                  RFC 6962 root
//!
//! — moat.example/audit/0192f0c4-… AbCd…base64(key id ‖ signature)…
//! ```
//!
//! The key name is the origin; key ID = `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]`; a
//! verifier key is written `name+hex(key id)+base64(0x01 ‖ public key)`.

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use crate::tlog::Hash;

/// Signature algorithm byte of Ed25519 in signed notes.
const ALG_ED25519: u8 = 0x01;
/// Signature type byte of a timestamped Ed25519 witness cosignature (C2SP tlog-cosignature v1).
const ALG_COSIGNATURE_V1: u8 = 0x04;
/// The em dash and space that open a signature line.
const SIG_PREFIX: &str = "\u{2014} ";
/// As Go's `note.Open`: more signature lines than this is not a note.
const MAX_SIGNATURES: usize = 100;
/// Notes larger than this are refused before parsing.
pub const MAX_NOTE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("key name must be non-empty and contain no spaces or '+'")]
    BadName,
    #[error("malformed verifier key")]
    BadKey,
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("no signature by {0} on the note")]
    Unsigned(String),
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
    #[error("malformed checkpoint: {0}")]
    BadCheckpoint(&'static str),
    #[error("cannot generate a key")]
    KeyGen,
}

/// A valid key name: non-empty, no Unicode whitespace, no `+`.
pub fn is_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

pub fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    key_id_of(name, ALG_ED25519, public)
}

/// `SHA-256(name ‖ 0x0A ‖ alg ‖ public key)[:4]`.
fn key_id_of(name: &str, alg: u8, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', alg]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The checkpoint body (the note text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// Extra lines after the root (each without its newline), e.g. a retention cut.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    pub fn body(&self) -> String {
        let mut s = format!("{}\n{}\n{}\n", self.origin, self.size, STANDARD.encode(self.root));
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    pub fn parse_body(text: &str) -> Result<Self, NoteError> {
        let body = text.strip_suffix('\n').ok_or(NoteError::BadCheckpoint("no final newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty()).ok_or(NoteError::BadCheckpoint("no origin"))?;
        let size = lines.next().ok_or(NoteError::BadCheckpoint("no tree size"))?;
        // Decimal, no sign, no leading zeros.
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) || (size.len() > 1 && size.starts_with('0')) {
            return Err(NoteError::BadCheckpoint("tree size is not a decimal number"));
        }
        let size = size.parse::<u64>().map_err(|_| NoteError::BadCheckpoint("tree size is not a decimal number"))?;
        let root = lines.next().ok_or(NoteError::BadCheckpoint("no root hash"))?;
        let root: Hash = STANDARD
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or(NoteError::BadCheckpoint("root hash is not 32 bytes of base64"))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(NoteError::BadCheckpoint("empty extension line"));
        }
        Ok(Self { origin: origin.to_owned(), size, root, extensions })
    }
}

/// Signs notes under one key name.
pub struct NoteSigner {
    name: String,
    id: [u8; 4],
    public: [u8; 32],
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner").field("name", &self.name).field("id", &hex::encode(self.id)).finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A signer from a 32-byte Ed25519 seed (the secret).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        let (id, public, key) = named_key(name, seed, ALG_ED25519)?;
        Ok(Self { name: name.to_owned(), id, public, key })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier { name: self.name.clone(), id: self.id, public: self.public }
    }

    /// Signs `text` (which must end in a newline and hold no blank line) and returns the note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let sig = self.key.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(4 + 64);
        blob.extend_from_slice(&self.id);
        blob.extend_from_slice(sig.as_ref());
        Ok(format!("{text}\n{SIG_PREFIX}{} {}\n", self.name, STANDARD.encode(blob)))
    }
}

/// A fresh random Ed25519 seed.
pub fn generate_seed() -> Result<[u8; 32], NoteError> {
    crate::secret::random_bytes::<32>().map_err(|_| NoteError::KeyGen)
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::Malformed("text does not end in a newline"));
    }
    if text.contains("\n\n") || text.starts_with('\n') {
        return Err(NoteError::Malformed("text holds a blank line"));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::Malformed("text holds a control character"));
    }
    Ok(())
}

/// Verifies notes signed under one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    public: [u8; 32],
}

impl NoteVerifier {
    /// Parses `name+hex(key id)+base64(0x01 ‖ public key)`.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let (name, id, public) = parse_vkey(vkey, ALG_ED25519)?;
        Ok(Self { name, id, public })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public_key(&self) -> &[u8; 32] {
        &self.public
    }

    pub fn encode(&self) -> String {
        encode_vkey(&self.name, &self.id, ALG_ED25519, &self.public)
    }

    /// Checks the note's signature by this key and returns its text. Signatures by other keys
    /// are ignored (C2SP signed-note); a bad signature by this key rejects the note.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        if note.len() > MAX_NOTE_BYTES {
            return Err(NoteError::Malformed("note too large"));
        }
        let split = note.rfind("\n\n").ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let (text, sigs) = (&note[..=split], &note[split + 2..]);
        check_text(text)?;
        let sigs = sigs.strip_suffix('\n').ok_or(NoteError::Malformed("signature block does not end in a newline"))?;
        let lines: Vec<&str> = sigs.split('\n').collect();
        if lines.len() > MAX_SIGNATURES {
            return Err(NoteError::Malformed("too many signatures"));
        }
        for line in lines {
            let rest = line.strip_prefix(SIG_PREFIX).ok_or(NoteError::Malformed("signature line does not start with an em dash"))?;
            let (name, b64) = rest.split_once(' ').ok_or(NoteError::Malformed("signature line has no signature"))?;
            if !is_key_name(name) {
                return Err(NoteError::Malformed("signature line names an invalid key"));
            }
            let blob = STANDARD.decode(b64).map_err(|_| NoteError::Malformed("signature is not base64"))?;
            if blob.len() < 5 {
                return Err(NoteError::Malformed("signature too short"));
            }
            if name != self.name || blob[..4] != self.id {
                continue;
            }
            return UnparsedPublicKey::new(&ED25519, &self.public)
                .verify(text.as_bytes(), &blob[4..])
                .map(|()| text)
                .map_err(|_| NoteError::BadSignature(self.name.clone()));
        }
        Err(NoteError::Unsigned(self.name.clone()))
    }
}

/// A `name+hex(key id)+base64(alg ‖ key)` verifier key of an Ed25519 key with signature type
/// `alg`: its name, key id and public key.
fn parse_vkey(vkey: &str, alg: u8) -> Result<(String, [u8; 4], [u8; 32]), NoteError> {
    let mut parts = vkey.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::BadKey);
    };
    if !is_key_name(name) || id.len() != 8 {
        return Err(NoteError::BadKey);
    }
    let id: [u8; 4] = hex::decode(id).ok().and_then(|v| v.try_into().ok()).ok_or(NoteError::BadKey)?;
    let key = STANDARD.decode(key).map_err(|_| NoteError::BadKey)?;
    let (&got, public) = key.split_first().ok_or(NoteError::BadKey)?;
    let public: [u8; 32] = public.try_into().map_err(|_| NoteError::BadKey)?;
    if got != alg || key_id_of(name, alg, &public) != id {
        return Err(NoteError::BadKey);
    }
    Ok((name.to_owned(), id, public))
}

/// An Ed25519 key from a seed under a key name: its key id (for signature type `alg`), public
/// key and key pair.
fn named_key(name: &str, seed: &[u8; 32], alg: u8) -> Result<([u8; 4], [u8; 32], Ed25519KeyPair), NoteError> {
    if !is_key_name(name) {
        return Err(NoteError::BadName);
    }
    let key = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| NoteError::BadKey)?;
    let public: [u8; 32] = key.public_key().as_ref().try_into().map_err(|_| NoteError::BadKey)?;
    Ok((key_id_of(name, alg, &public), public, key))
}

/// `name+hex(key id)+base64(alg ‖ public key)`.
fn encode_vkey(name: &str, id: &[u8; 4], alg: u8, public: &[u8; 32]) -> String {
    let mut k = vec![alg];
    k.extend_from_slice(public);
    format!("{name}+{}+{}", hex::encode(id), STANDARD.encode(k))
}

/// The message a v1 cosignature signs: `cosignature/v1\ntime <t>\n` then the checkpoint body.
fn cosigned_message(timestamp: u64, body: &str) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{body}")
}

/// A witness's key for C2SP tlog-cosignature v1 (timestamped Ed25519, signature type 0x04):
/// checks the cosignatures a witness returns for a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignatureVerifier {
    name: String,
    id: [u8; 4],
    public: [u8; 32],
}

impl CosignatureVerifier {
    /// Parses `name+hex(key id)+base64(0x04 ‖ public key)`.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let (name, id, public) = parse_vkey(vkey, ALG_COSIGNATURE_V1)?;
        Ok(Self { name, id, public })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn encode(&self) -> String {
        encode_vkey(&self.name, &self.id, ALG_COSIGNATURE_V1, &self.public)
    }

    /// Of the signature lines in `lines` (a witness's answer), the first that is this witness's
    /// cosignature over the checkpoint body `body` and verifies: the line and its timestamp.
    /// Lines of other keys are ignored; a line of this key that does not verify is an error.
    pub fn find<'a>(&self, lines: &'a str, body: &str) -> Result<(&'a str, u64), NoteError> {
        for line in lines.lines().filter(|l| !l.is_empty()) {
            let rest = line.strip_prefix(SIG_PREFIX).ok_or(NoteError::Malformed("signature line does not start with an em dash"))?;
            let (name, b64) = rest.split_once(' ').ok_or(NoteError::Malformed("signature line has no signature"))?;
            let blob = STANDARD.decode(b64).map_err(|_| NoteError::Malformed("signature is not base64"))?;
            if name != self.name || blob.len() < 4 || blob[..4] != self.id {
                continue;
            }
            let (ts, sig) = blob[4..].split_at_checked(8).ok_or(NoteError::Malformed("cosignature too short"))?;
            let timestamp = u64::from_be_bytes(ts.try_into().map_err(|_| NoteError::Malformed("cosignature too short"))?);
            if timestamp > i64::MAX as u64 {
                return Err(NoteError::Malformed("cosignature timestamp out of range"));
            }
            UnparsedPublicKey::new(&ED25519, &self.public)
                .verify(cosigned_message(timestamp, body).as_bytes(), sig)
                .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
            return Ok((line, timestamp));
        }
        Err(NoteError::Unsigned(self.name.clone()))
    }
}

/// Produces v1 cosignatures (what a witness does; moat uses it in tests and tools).
pub struct Cosigner {
    name: String,
    id: [u8; 4],
    public: [u8; 32],
    key: Ed25519KeyPair,
}

impl Cosigner {
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        let (id, public, key) = named_key(name, seed, ALG_COSIGNATURE_V1)?;
        Ok(Self { name: name.to_owned(), id, public, key })
    }

    pub fn verifier(&self) -> CosignatureVerifier {
        CosignatureVerifier { name: self.name.clone(), id: self.id, public: self.public }
    }

    /// The signature line (ending in a newline) cosigning checkpoint body `body` at `timestamp`.
    pub fn cosign(&self, body: &str, timestamp: u64) -> String {
        let sig = self.key.sign(cosigned_message(timestamp, body).as_bytes());
        let mut blob = Vec::with_capacity(4 + 8 + 64);
        blob.extend_from_slice(&self.id);
        blob.extend_from_slice(&timestamp.to_be_bytes());
        blob.extend_from_slice(sig.as_ref());
        format!("{SIG_PREFIX}{} {}\n", self.name, STANDARD.encode(blob))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosignatures_verify_and_bind_the_witness_the_time_and_the_checkpoint() {
        let w = Cosigner::from_seed("witness.test/w1", &[3; 32]).unwrap();
        let v = CosignatureVerifier::parse(&w.verifier().encode()).unwrap();
        let body = Checkpoint { origin: "moat.test/audit/platform".into(), size: 9, root: [4; 32], extensions: vec![] }.body();
        let line = w.cosign(&body, 1_700_000_000);
        let other = Cosigner::from_seed("witness.test/w2", &[5; 32]).unwrap().cosign(&body, 1);
        let answer = format!("{other}{line}");
        assert_eq!(v.find(&answer, &body).unwrap(), (line.trim_end(), 1_700_000_000));
        // Another checkpoint, a changed time, no line of this witness: refused.
        let body2 = body.replace("\n9\n", "\n10\n");
        assert!(matches!(v.find(&line, &body2), Err(NoteError::BadSignature(_))));
        let blob = STANDARD.decode(line.trim_end().rsplit(' ').next().unwrap()).unwrap();
        let mut later = blob.clone();
        later[11] ^= 1;
        let forged = format!("{SIG_PREFIX}witness.test/w1 {}\n", STANDARD.encode(later));
        assert!(matches!(v.find(&forged, &body), Err(NoteError::BadSignature(_))));
        assert!(matches!(v.find(&other, &body), Err(NoteError::Unsigned(_))));
        // A log key (type 0x01) is not a witness key, and the reverse.
        let log = NoteSigner::from_seed("moat.test/audit/platform", &[7; 32]).unwrap();
        assert_eq!(CosignatureVerifier::parse(&log.verifier().encode()), Err(NoteError::BadKey));
        assert_eq!(NoteVerifier::parse(&w.verifier().encode()), Err(NoteError::BadKey));
        // A cosigned checkpoint still opens with the log's key.
        let note = log.sign(&body).unwrap() + &line;
        assert_eq!(log.verifier().open(&note).unwrap(), body);
    }

    fn signer(name: &str) -> NoteSigner {
        NoteSigner::from_seed(name, &[7u8; 32]).expect("signer")
    }

    #[test]
    fn checkpoint_round_trips_through_a_signed_note() {
        let s = signer("moat.test/audit/platform");
        let cp = Checkpoint { origin: s.name().to_owned(), size: 42, root: [9u8; 32], extensions: vec![] };
        let note = s.sign(&cp.body()).expect("sign");
        let v = NoteVerifier::parse(&s.verifier().encode()).expect("vkey parses");
        let text = v.open(&note).expect("verifies");
        assert_eq!(Checkpoint::parse_body(text).expect("parses"), cp);
    }

    #[test]
    fn forgeries_are_refused() {
        let s = signer("moat.test/a");
        let note = s.sign("moat.test/a\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").expect("sign");
        let v = s.verifier();
        // Another size under the same signature.
        let edited = note.replacen("\n1\n", "\n2\n", 1);
        assert_eq!(v.open(&edited), Err(NoteError::BadSignature("moat.test/a".into())));
        // Another key under the same name: its signature is not ours (different key id).
        let other = NoteSigner::from_seed("moat.test/a", &[8u8; 32]).expect("signer");
        let theirs = other.sign("moat.test/a\n2\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").expect("sign");
        assert_eq!(v.open(&theirs), Err(NoteError::Unsigned("moat.test/a".into())));
        // A signed note of another log (another name) does not count.
        let b = signer("moat.test/b");
        assert!(matches!(
            v.open(&b.sign("moat.test/b\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").expect("sign")),
            Err(NoteError::Unsigned(_))
        ));
        // Truncated, garbage, no blank line.
        assert!(v.open(&note[..note.len() - 3]).is_err());
        assert!(v.open("garbage").is_err());
        assert!(v.open("").is_err());
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert_eq!(NoteSigner::from_seed("has space", &[1; 32]).err(), Some(NoteError::BadName));
        assert_eq!(NoteSigner::from_seed("a+b", &[1; 32]).err(), Some(NoteError::BadName));
        assert!(signer("n").sign("no newline").is_err());
        assert!(signer("n").sign("blank\n\nline\n").is_err());
        for k in ["", "a+b", "a+zzzzzzzz+AQ==", "a+00000000+AQ==", "n+12345678+notbase64!"] {
            assert_eq!(NoteVerifier::parse(k), Err(NoteError::BadKey), "{k}");
        }
        for body in
            ["", "o\n", "o\n1\n", "o\n01\nAAAA\n", "o\n-1\nAAAA\n", "o\n1\nAAAA\n", "\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"]
        {
            assert!(Checkpoint::parse_body(body).is_err(), "{body:?}");
        }
    }
}
