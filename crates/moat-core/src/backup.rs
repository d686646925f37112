//! The backup archive: a stream of named entries sealed under a backup key with a segmented
//! AEAD (the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár, laid out like
//! Tink's AES-GCM-HKDF streaming AEAD), so that an archive of any size is written and checked
//! in bounded memory, and any change, reordering, truncation or extension is detected.
//!
//! ```text
//! header   "MOATBAK1" ‖ version (1) ‖ key fingerprint (8) ‖ salt (32) ‖ nonce prefix (7) ‖ key check (16)
//! segment  AES-256-GCM(archive key, nonce = prefix ‖ counter (u32 BE) ‖ last (0|1), aad = header)
//!          of SEGMENT plaintext bytes (the last one: 0..=SEGMENT bytes, flagged last)
//! archive key = HKDF-SHA256(backup key, salt, "moat-backup-v1 stream")
//! key check   = HKDF-SHA256(backup key, salt, "moat-backup-v1 check")[..16]
//! fingerprint = HKDF-SHA256(backup key, "", "moat-backup-v1 fingerprint")[..8]
//! ```
//!
//! Nonces never repeat: every archive draws a fresh 256-bit salt, so its key is its own, and
//! within an archive the counter numbers the segments. The counter and the last flag bind
//! each segment's place: a dropped, swapped or appended segment, or an archive cut at a
//! segment boundary, fails authentication. The key check names a wrong key before any
//! decryption; the fingerprint (not secret) lets an operator match a key file to an archive.
//!
//! Inside the stream, entries follow each other: `1 ‖ name length (u16 BE) ‖ name ‖ size (u64
//! BE) ‖ bytes`, and `0` ends the archive. Names are relative paths of plain components
//! ([`check_entry_name`]), checked on both sides.

use std::io::{self, BufRead, Read, Write};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroize;

use crate::error::MoatError;
use crate::keys::{KEY_LEN, SecretKey};
use crate::secret::random_bytes;

pub const MAGIC: &[u8; 8] = b"MOATBAK1";
pub const VERSION: u8 = 1;
/// Plaintext bytes per segment.
pub const SEGMENT: usize = 1 << 20;
const TAG: usize = 16;
const FINGERPRINT_LEN: usize = 8;
const SALT_LEN: usize = 32;
const PREFIX_LEN: usize = 7;
const CHECK_LEN: usize = 16;
pub const HEADER_LEN: usize = MAGIC.len() + 1 + FINGERPRINT_LEN + SALT_LEN + PREFIX_LEN + CHECK_LEN;
/// Longest entry name.
pub const MAX_NAME: usize = 1024;

fn corrupt(what: impl Into<String>) -> MoatError {
    MoatError::invalid("backup_corrupt", what.into())
}

/// The key that seals backups, kept apart from the data it protects (a file made by
/// `moat backup keygen`, stored off the host).
#[derive(Clone)]
pub struct BackupKey(SecretKey);

impl BackupKey {
    pub fn generate() -> Result<Self, MoatError> {
        SecretKey::generate().map(Self)
    }

    /// 64 hex digits (surrounding whitespace allowed).
    pub fn parse(text: &str) -> Result<Self, MoatError> {
        let mut raw = hex::decode(text.trim()).map_err(|_| bad_key())?;
        let bytes: Result<[u8; KEY_LEN], _> = raw.as_slice().try_into();
        raw.zeroize();
        bytes.map(|b| Self(SecretKey::from_bytes(b))).map_err(|_| bad_key())
    }

    /// The key file's contents.
    pub fn encode(&self) -> String {
        format!("{}\n", hex::encode(self.0.expose()))
    }

    /// A public name of the key (16 hex digits).
    pub fn fingerprint(&self) -> String {
        hex::encode(&self.derive(&[], b"moat-backup-v1 fingerprint").expose()[..FINGERPRINT_LEN])
    }

    fn derive(&self, salt: &[u8], info: &[u8]) -> SecretKey {
        use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
        let mut out = [0u8; KEY_LEN];
        // A 32-byte HKDF-SHA256 output cannot fail; were it to, the key stays zero and the key
        // check fails closed.
        let _ = Salt::new(HKDF_SHA256, salt).extract(self.0.expose()).expand(&[info], HKDF_SHA256).and_then(|okm| okm.fill(&mut out));
        SecretKey::from_bytes(out)
    }

    /// The key that wraps secrets carried inside one archive (a tenant's data keys), bound to
    /// that archive's salt.
    pub fn inner_key(&self, header: &Header) -> SecretKey {
        self.derive(&header.salt, b"moat-backup-v1 inner")
    }
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackupKey({})", self.fingerprint())
    }
}

fn bad_key() -> MoatError {
    MoatError::invalid("bad_backup_key", "a backup key file holds 64 hex digits (make one with `moat backup keygen`)")
}

/// An archive's header, in the clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub fingerprint: [u8; FINGERPRINT_LEN],
    salt: [u8; SALT_LEN],
    prefix: [u8; PREFIX_LEN],
    check: [u8; CHECK_LEN],
}

impl Header {
    fn new(key: &BackupKey) -> Result<Self, MoatError> {
        let salt = random_bytes::<SALT_LEN>()?;
        let mut fingerprint = [0u8; FINGERPRINT_LEN];
        fingerprint.copy_from_slice(&key.derive(&[], b"moat-backup-v1 fingerprint").expose()[..FINGERPRINT_LEN]);
        let mut check = [0u8; CHECK_LEN];
        check.copy_from_slice(&key.derive(&salt, b"moat-backup-v1 check").expose()[..CHECK_LEN]);
        Ok(Self { fingerprint, salt, prefix: random_bytes::<PREFIX_LEN>()?, check })
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let mut at = 0;
        for part in [&MAGIC[..], &[VERSION], &self.fingerprint, &self.salt, &self.prefix, &self.check] {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        out
    }

    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Self, MoatError> {
        if &b[..MAGIC.len()] != MAGIC {
            return Err(MoatError::invalid("not_a_backup", "this file is not a moat backup archive"));
        }
        if b[MAGIC.len()] != VERSION {
            return Err(MoatError::invalid(
                "backup_version_unsupported",
                format!("archive format {} is not supported by this moat (it reads format {VERSION})", b[MAGIC.len()]),
            ));
        }
        let mut at = MAGIC.len() + 1;
        let mut take = |n: usize| {
            let s = &b[at..at + n];
            at += n;
            s
        };
        let mut h = Self { fingerprint: [0; FINGERPRINT_LEN], salt: [0; SALT_LEN], prefix: [0; PREFIX_LEN], check: [0; CHECK_LEN] };
        h.fingerprint.copy_from_slice(take(FINGERPRINT_LEN));
        h.salt.copy_from_slice(take(SALT_LEN));
        h.prefix.copy_from_slice(take(PREFIX_LEN));
        h.check.copy_from_slice(take(CHECK_LEN));
        Ok(h)
    }

    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint)
    }

    /// The archive's stream key, after checking that `key` is the one that sealed it.
    fn stream_key(&self, key: &BackupKey) -> Result<LessSafeKey, MoatError> {
        use subtle::ConstantTimeEq;
        let check = key.derive(&self.salt, b"moat-backup-v1 check");
        if !bool::from(check.expose()[..CHECK_LEN].ct_eq(&self.check)) {
            return Err(MoatError::invalid(
                "backup_wrong_key",
                format!(
                    "this archive was sealed with backup key {}, not with the key given ({})",
                    self.fingerprint_hex(),
                    key.fingerprint()
                ),
            ));
        }
        let k = key.derive(&self.salt, b"moat-backup-v1 stream");
        UnboundKey::new(&AES_256_GCM, k.expose()).map(LessSafeKey::new).map_err(|_| MoatError::internal("backup_key"))
    }

    fn nonce(&self, counter: u32, last: bool) -> Nonce {
        let mut n = [0u8; 12];
        n[..PREFIX_LEN].copy_from_slice(&self.prefix);
        n[PREFIX_LEN..PREFIX_LEN + 4].copy_from_slice(&counter.to_be_bytes());
        n[11] = u8::from(last);
        Nonce::assume_unique_for_key(n)
    }
}

fn io_error(e: MoatError) -> io::Error {
    io::Error::other(e)
}

/// The product error behind an I/O error from a [`Sealer`] or an [`Opener`]; other I/O errors
/// become `io_error` naming `what`.
pub fn from_io(e: io::Error, what: &str) -> MoatError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<MoatError>()) {
        Some(m) => m.clone(),
        None if e.kind() == io::ErrorKind::UnexpectedEof => corrupt("the archive ends early (truncated)"),
        None => MoatError::new(crate::ErrorKind::Internal, "io_error", format!("{what}: {e}")),
    }
}

/// What both directions share: the header (every segment's AAD), the archive's stream key,
/// and the number of the next segment.
struct Segments {
    header: Header,
    aad: [u8; HEADER_LEN],
    key: LessSafeKey,
    counter: u32,
    size: usize,
}

impl Segments {
    fn new(header: Header, key: &BackupKey, size: usize) -> Result<Self, MoatError> {
        let aad = header.encode();
        let key = header.stream_key(key)?;
        Ok(Self { header, aad, key, counter: 0, size })
    }

    fn advance(&mut self) -> io::Result<()> {
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| io_error(MoatError::invalid("backup_too_large", "an archive holds at most 2^32 segments (4 PiB)")))?;
        Ok(())
    }

    /// Seals the next segment in place (its tag appended).
    fn seal(&mut self, buf: &mut Vec<u8>, last: bool) -> io::Result<()> {
        let nonce = self.header.nonce(self.counter, last);
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(&self.aad[..]), buf)
            .map_err(|_| io_error(MoatError::internal("backup_seal")))?;
        self.advance()
    }

    /// Opens the next segment in place (left holding its plaintext).
    fn open(&mut self, buf: &mut Vec<u8>, last: bool) -> io::Result<()> {
        let at = self.counter;
        let nonce = self.header.nonce(at, last);
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(&self.aad[..]), buf)
            .map_err(|_| {
                io_error(corrupt(if last {
                    format!("segment {at} (the last) fails authentication: the archive was cut short, altered or extended")
                } else {
                    format!("segment {at} fails authentication: the archive was altered or its segments reordered")
                }))
            })?
            .len();
        buf.truncate(plain_len);
        self.advance()
    }
}

/// Seals what is written to it into `w`; [`Sealer::finish`] writes the last segment.
pub struct Sealer<W: Write> {
    w: W,
    segments: Segments,
    buf: Vec<u8>,
}

impl<W: Write> Sealer<W> {
    pub fn new(w: W, key: &BackupKey) -> Result<Self, MoatError> {
        Self::with_segment(w, key, SEGMENT)
    }

    fn with_segment(mut w: W, key: &BackupKey, segment: usize) -> Result<Self, MoatError> {
        let segments = Segments::new(Header::new(key)?, key, segment)?;
        w.write_all(&segments.aad).map_err(|e| from_io(e, "cannot write the archive"))?;
        Ok(Self { w, segments, buf: Vec::with_capacity(segment + TAG) })
    }

    pub fn header(&self) -> &Header {
        &self.segments.header
    }

    fn seal(&mut self, last: bool) -> io::Result<()> {
        self.segments.seal(&mut self.buf, last)?;
        self.w.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Seals the last segment and returns the writer.
    pub fn finish(mut self) -> Result<W, MoatError> {
        self.seal(true).map_err(|e| from_io(e, "cannot write the archive"))?;
        self.w.flush().map_err(|e| from_io(e, "cannot write the archive"))?;
        Ok(self.w)
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.segments.size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.segments.size {
            self.seal(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// Opens an archive: reads and checks the header, then yields the authenticated plaintext.
/// Reading to the end proves the archive whole; an error names what is wrong and nothing
/// unauthenticated is ever returned.
pub struct Opener<R: BufRead> {
    r: R,
    segments: Segments,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<R: BufRead> Opener<R> {
    pub fn new(r: R, key: &BackupKey) -> Result<Self, MoatError> {
        Self::with_segment(r, key, SEGMENT)
    }

    fn with_segment(mut r: R, key: &BackupKey, segment: usize) -> Result<Self, MoatError> {
        let mut head = [0u8; HEADER_LEN];
        r.read_exact(&mut head).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => MoatError::invalid("not_a_backup", "this file is too short to be a moat backup archive"),
            _ => from_io(e, "cannot read the archive"),
        })?;
        let segments = Segments::new(Header::parse(&head)?, key, segment)?;
        Ok(Self { r, segments, buf: Vec::with_capacity(segment + TAG), pos: 0, done: false })
    }

    pub fn header(&self) -> &Header {
        &self.segments.header
    }

    /// Whether the last segment has been read and authenticated.
    pub fn is_complete(&self) -> bool {
        self.done && self.pos == self.buf.len()
    }

    fn next_segment(&mut self) -> io::Result<()> {
        self.buf.clear();
        self.pos = 0;
        let want = self.segments.size + TAG;
        self.buf.resize(want, 0);
        let mut got = 0;
        while got < want {
            match self.r.read(&mut self.buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.buf.truncate(got);
        // A full segment is the last one only when nothing follows it.
        let last = got < want || self.r.fill_buf()?.is_empty();
        self.segments.open(&mut self.buf, last)?;
        self.done = last;
        Ok(())
    }
}

impl<R: BufRead> Read for Opener<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done || out.is_empty() {
                return Ok(0);
            }
            self.next_segment()?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Checks an entry name: a relative path of `/`-separated components, none empty, `.` or
/// `..`, without backslashes, control characters or a drive prefix.
pub fn check_entry_name(name: &str) -> Result<(), MoatError> {
    let bad = |why: &str| corrupt(format!("entry name {name:?} {why}"));
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(bad("is empty or too long"));
    }
    if name.chars().any(|c| c.is_control() || c == '\\' || c == ':') {
        return Err(bad("holds a control character, a backslash or a colon"));
    }
    if name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(bad("is not a plain relative path"));
    }
    Ok(())
}

/// Writes the header of an entry of `size` bytes; its bytes follow.
pub fn write_entry(w: &mut impl Write, name: &str, size: u64) -> Result<(), MoatError> {
    check_entry_name(name)?;
    let len = u16::try_from(name.len()).map_err(|_| corrupt("entry name too long"))?;
    let mut head = Vec::with_capacity(1 + 2 + name.len() + 8);
    head.push(1);
    head.extend_from_slice(&len.to_be_bytes());
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(&size.to_be_bytes());
    w.write_all(&head).map_err(|e| from_io(e, "cannot write the archive"))
}

/// Writes the end marker.
pub fn write_end(w: &mut impl Write) -> Result<(), MoatError> {
    w.write_all(&[0]).map_err(|e| from_io(e, "cannot write the archive"))
}

/// An entry's name and size; `None` at the end marker.
pub fn read_entry(r: &mut impl Read) -> Result<Option<(String, u64)>, MoatError> {
    let rd = |e| from_io(e, "cannot read the archive");
    let mut kind = [0u8; 1];
    r.read_exact(&mut kind).map_err(rd)?;
    match kind[0] {
        0 => return Ok(None),
        1 => {}
        k => return Err(corrupt(format!("unknown entry kind {k}"))),
    }
    let mut len = [0u8; 2];
    r.read_exact(&mut len).map_err(rd)?;
    let mut name = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut name).map_err(rd)?;
    let name = String::from_utf8(name).map_err(|_| corrupt("an entry name is not UTF-8"))?;
    check_entry_name(&name)?;
    let mut size = [0u8; 8];
    r.read_exact(&mut size).map_err(rd)?;
    Ok(Some((name, u64::from_be_bytes(size))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: usize = 64;

    fn key(b: u8) -> BackupKey {
        BackupKey(SecretKey::from_bytes([b; KEY_LEN]))
    }

    fn seal(data: &[u8], k: &BackupKey) -> Vec<u8> {
        let mut s = Sealer::with_segment(Vec::new(), k, SEG).expect("sealer");
        // Odd write sizes cross segment boundaries.
        for chunk in data.chunks(37) {
            s.write_all(chunk).expect("write");
        }
        s.finish().expect("finish")
    }

    fn open(archive: &[u8], k: &BackupKey) -> Result<Vec<u8>, MoatError> {
        let mut o = Opener::with_segment(archive, k, SEG)?;
        let mut out = Vec::new();
        o.read_to_end(&mut out).map_err(|e| from_io(e, "read"))?;
        assert!(o.is_complete());
        Ok(out)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_every_segment_edge() {
        let k = key(7);
        for n in [0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG, 3 * SEG + 5] {
            let plain = data(n);
            let sealed = seal(&plain, &k);
            assert_eq!(sealed.len(), HEADER_LEN + n + TAG * (n / SEG + 1), "one tag per segment, the last may be empty ({n})");
            assert_eq!(open(&sealed, &k).expect("open"), plain, "{n} bytes");
            assert!(!sealed.windows(8).any(|w| n >= 8 && w == &plain[..8]), "no plaintext on disk");
        }
        // Two archives of the same bytes under the same key share nothing but the fingerprint.
        let (a, b) = (seal(&data(100), &k), seal(&data(100), &k));
        assert_eq!(a[..17], b[..17]);
        assert_ne!(a[17..], b[17..]);
    }

    #[test]
    fn every_change_is_caught() {
        let k = key(7);
        let plain = data(3 * SEG + 5);
        let sealed = seal(&plain, &k);
        // Every flipped bit, header included.
        for i in 0..sealed.len() * 8 {
            let mut t = sealed.clone();
            t[i / 8] ^= 1 << (i % 8);
            assert!(open(&t, &k).is_err(), "bit {i} flipped went unnoticed");
        }
        // Cut anywhere: at a segment boundary too.
        for cut in 0..sealed.len() {
            assert!(open(&sealed[..cut], &k).is_err(), "cut at {cut} went unnoticed");
        }
        let seg = SEG + TAG;
        let body = &sealed[HEADER_LEN..];
        let segments: Vec<&[u8]> = body.chunks(seg).collect();
        // A dropped, swapped or repeated segment, and bytes appended.
        let glue = |parts: &[&[u8]]| [&sealed[..HEADER_LEN], &parts.concat()].concat();
        let code = |a: &[u8]| open(a, &k).expect_err("caught").code;
        assert_eq!(code(&glue(&[segments[0], segments[2], segments[3]])), "backup_corrupt");
        assert_eq!(code(&glue(&[segments[1], segments[0], segments[2], segments[3]])), "backup_corrupt");
        assert_eq!(code(&glue(&[segments[0], segments[0], segments[1], segments[2], segments[3]])), "backup_corrupt");
        assert_eq!(code(&glue(&[segments[0], segments[1], segments[2]])), "backup_corrupt", "cut at a boundary");
        assert_eq!(code(&[&sealed[..], b"x"].concat()), "backup_corrupt");
        // A segment of another archive under the same key.
        let other = seal(&data(3 * SEG + 5), &k);
        assert_eq!(code(&glue(&[segments[0], &other[HEADER_LEN + seg..HEADER_LEN + 2 * seg], segments[2], segments[3]])), "backup_corrupt");
    }

    #[test]
    fn the_header_names_wrong_keys_and_foreign_files() {
        let sealed = seal(&data(10), &key(7));
        let e = open(&sealed, &key(8)).expect_err("wrong key");
        assert_eq!(e.code, "backup_wrong_key");
        assert!(e.message.contains(&key(7).fingerprint()) && e.message.contains(&key(8).fingerprint()), "{}", e.message);
        assert_eq!(
            open(b"PAR1 not a backup at all, but long enough to have a header of 72 bytes....", &key(7)).expect_err("foreign").code,
            "not_a_backup"
        );
        assert_eq!(open(b"MOAT", &key(7)).expect_err("short").code, "not_a_backup");
        let mut v2 = sealed.clone();
        v2[8] = 2;
        assert_eq!(open(&v2, &key(7)).expect_err("version").code, "backup_version_unsupported");
        assert_eq!(Header::parse(&sealed[..HEADER_LEN].try_into().expect("len")).expect("header").fingerprint_hex(), key(7).fingerprint());
    }

    #[test]
    fn keys_parse_from_their_file() {
        let k = BackupKey::generate().expect("rng");
        let again = BackupKey::parse(&k.encode()).expect("parse");
        assert_eq!(again.fingerprint(), k.fingerprint());
        assert_eq!(k.fingerprint().len(), 16);
        for bad in ["", "zz", &"ab".repeat(31), &"ab".repeat(33)] {
            assert_eq!(BackupKey::parse(bad).map(|_| ()).expect_err("bad").code, "bad_backup_key");
        }
    }

    #[test]
    fn entries_frame_and_names_stay_inside() {
        let mut buf = Vec::new();
        write_entry(&mut buf, "data/t/x.parquet", 3).expect("entry");
        buf.extend_from_slice(b"abc");
        write_end(&mut buf).expect("end");
        let mut r = &buf[..];
        assert_eq!(read_entry(&mut r).expect("read"), Some(("data/t/x.parquet".to_owned(), 3)));
        let mut body = [0u8; 3];
        r.read_exact(&mut body).expect("body");
        assert_eq!(read_entry(&mut r).expect("end"), None);
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\\b", "c:x", "a\nb", &"a".repeat(MAX_NAME + 1)] {
            assert_eq!(check_entry_name(bad).expect_err(bad).code, "backup_corrupt", "{bad:?}");
            assert!(write_entry(&mut Vec::new(), bad, 0).is_err());
        }
        // A crafted name inside an (authentic) stream is refused on reading too.
        let mut forged = vec![1u8, 0, 5];
        forged.extend_from_slice(b"../..");
        forged.extend_from_slice(&0u64.to_be_bytes());
        assert_eq!(read_entry(&mut &forged[..]).expect_err("forged").code, "backup_corrupt");
        assert_eq!(read_entry(&mut &[7u8][..]).expect_err("kind").code, "backup_corrupt");
        assert_eq!(read_entry(&mut &[1u8, 0][..]).expect_err("short").code, "backup_corrupt");
    }
}
