//! Mask functions (contract: "Classification and masking defaults") and their vectorised
//! DataFusion UDFs. Every mask yields text (a string-view array: short masks need no data
//! buffer); NULL stays NULL; values of other types are cast to text first. The UDFs are used only
//! inside governed scans and are not registered for SQL.

use std::sync::{Arc, RwLock};

use datafusion::arrow::array::builder::make_view;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArray, StringViewArray};
use datafusion::arrow::buffer::{Buffer, NullBuffer, ScalarBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{HashMap, Result as DfResult, exec_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskRule {
    /// SHA-256, first 16 hex characters: the same input gives the same output, so joins work.
    Hash16,
    /// Letters and digits hidden but the last four; separators kept (`***-**-6789`).
    LastFour,
    /// `[REDACTED]`.
    Redact,
    /// First character of the local part and the top-level domain (`j***@***.com`).
    EmailPartial,
    /// `****`.
    Full,
    /// The column is left out of the result.
    Omit,
}

impl MaskRule {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hash16" | "hash" => Some(Self::Hash16),
            "last_four" | "last4" => Some(Self::LastFour),
            "redact" => Some(Self::Redact),
            "email_partial" | "partial" => Some(Self::EmailPartial),
            "full" => Some(Self::Full),
            "omit" => Some(Self::Omit),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hash16 => "hash16",
            Self::LastFour => "last_four",
            Self::Redact => "redact",
            Self::EmailPartial => "email_partial",
            Self::Full => "full",
            Self::Omit => "omit",
        }
    }

    /// Masks one value into `out` (cleared first).
    pub fn apply_into(self, v: &str, out: &mut String) {
        out.clear();
        match self {
            Self::Hash16 => out.push_str(hash16(v).as_str()),
            Self::LastFour if v.is_ascii() => {
                let alnum = v.bytes().filter(u8::is_ascii_alphanumeric).count();
                // Four or fewer significant characters: showing "the last four" would show all.
                let keep_from = if alnum > 4 { alnum - 4 } else { usize::MAX };
                let mut seen = 0;
                out.extend(v.bytes().map(|b| {
                    if b.is_ascii_alphanumeric() {
                        seen += 1;
                        if seen > keep_from { b as char } else { '*' }
                    } else {
                        b as char
                    }
                }));
            }
            Self::LastFour => {
                let alnum = v.chars().filter(|c| c.is_alphanumeric()).count();
                let keep_from = if alnum > 4 { alnum - 4 } else { usize::MAX };
                let mut seen = 0;
                for c in v.chars() {
                    if c.is_alphanumeric() {
                        out.push(if seen >= keep_from { c } else { '*' });
                        seen += 1;
                    } else {
                        out.push(c);
                    }
                }
            }
            Self::Redact => out.push_str(REDACTED),
            Self::EmailPartial => match v.rsplit_once('@') {
                Some((local, domain)) if !local.is_empty() && domain.contains('.') => {
                    out.extend(local.chars().next());
                    out.push_str("***@***.");
                    out.push_str(domain.rsplit('.').next().unwrap_or(""));
                }
                _ => out.push_str(FULL),
            },
            Self::Full | Self::Omit => out.push_str(FULL),
        }
    }

    pub fn apply(self, v: &str) -> String {
        let mut s = String::with_capacity(v.len().max(16));
        self.apply_into(v, &mut s);
        s
    }

    /// The DataFusion UDF applying this mask (one per scan: hash masks keep a memo of the
    /// scan's hashes).
    pub fn udf(self) -> Arc<ScalarUDF> {
        let memo = (self == MaskRule::Hash16).then(|| Arc::new(HashMemo::default()));
        Arc::new(ScalarUDF::new_from_impl(MaskUdf { rule: self, signature: Signature::any(1, Volatility::Immutable), memo }))
    }
}

const FULL: &str = "****";
const REDACTED: &str = "[REDACTED]";

/// 16 lower-case hex characters: the first 8 bytes of SHA-256.
#[derive(Debug, Clone, Copy)]
pub struct Hex16([u8; 16]);

impl Hex16 {
    pub fn as_str(&self) -> &str {
        // Only hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or("0000000000000000")
    }
}

pub fn hash16(v: &str) -> Hex16 {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = Sha256::digest(v.as_bytes());
    let mut out = [0u8; 16];
    for (i, b) in d[..8].iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
    Hex16(out)
}

/// Masked values as a string-view array. A value of up to 12 bytes lives inside its view, with
/// no data buffer: every constant mask, the last four of SSNs and phone numbers, most partial
/// emails. Longer values (hashes) are written once per distinct input and shared by their views.
struct Views {
    views: Vec<u128>,
    data: Vec<u8>,
}

impl Views {
    fn with_capacity(n: usize) -> Self {
        Self { views: Vec::with_capacity(n), data: Vec::new() }
    }

    /// The view of `s`, its bytes stored if they do not fit inside the view.
    fn store(&mut self, s: &[u8]) -> DfResult<u128> {
        let Ok(offset) = u32::try_from(self.data.len()) else {
            return exec_err!("mask: a batch of masked text over 4 GiB");
        };
        if s.len() > 12 {
            self.data.extend_from_slice(s);
        }
        Ok(make_view(s, 0, offset))
    }

    fn push(&mut self, s: &[u8]) -> DfResult<()> {
        let v = self.store(s)?;
        self.views.push(v);
        Ok(())
    }

    fn finish(self, nulls: Option<NullBuffer>) -> DfResult<ArrayRef> {
        let buffers = if self.data.is_empty() { Vec::new() } else { vec![Buffer::from_vec(self.data)] };
        Ok(Arc::new(StringViewArray::try_new(ScalarBuffer::from(self.views), buffers, nulls)?))
    }
}

/// Hashes one scan has computed, shared by its partitions, so that a value repeated across
/// batches (a name) is hashed once per query rather than once per batch. It lives as long as the
/// query's plan and holds only that query's values. Bounded (values of at most
/// [`HashMemo::MAX_VALUE_BYTES`], [`HashMemo::MAX_BYTES`] in all): past the bound, new values
/// are hashed per batch as if there were no memo.
#[derive(Default)]
pub struct HashMemo {
    map: RwLock<HashMap<Box<str>, Hex16>>,
    bytes: std::sync::atomic::AtomicUsize,
}

impl HashMemo {
    pub const MAX_BYTES: usize = 4 * 1024 * 1024;
    pub const MAX_VALUE_BYTES: usize = 256;
}

impl std::fmt::Debug for HashMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashMemo")
    }
}

/// Masks every value of a text array (NULL stays NULL; the view of a NULL is empty).
fn mask_strings<'a>(
    rule: MaskRule,
    values: impl ExactSizeIterator<Item = Option<&'a str>>,
    nulls: Option<NullBuffer>,
    memo: Option<&HashMemo>,
) -> DfResult<ArrayRef> {
    let mut out = Views::with_capacity(values.len());
    match rule {
        MaskRule::Hash16 => {
            // Repeated values are looked up once per batch here, then in the query's memo;
            // only values new to the query are hashed.
            let mut local: HashMap<&str, u128> = HashMap::default();
            let mut fresh: Vec<(&str, Hex16)> = Vec::new();
            {
                let shared = memo.map(|m| m.map.read().unwrap_or_else(|p| p.into_inner()));
                for v in values {
                    let view = match v {
                        Some(s) => match local.get(s) {
                            Some(view) => *view,
                            None => {
                                let known = shared.as_ref().and_then(|m| m.get(s)).copied();
                                let h = known.unwrap_or_else(|| hash16(s));
                                if known.is_none() {
                                    fresh.push((s, h));
                                }
                                let view = out.store(h.as_str().as_bytes())?;
                                local.insert(s, view);
                                view
                            }
                        },
                        None => 0,
                    };
                    out.views.push(view);
                }
            }
            if let Some(m) = memo
                && !fresh.is_empty()
            {
                use std::sync::atomic::Ordering::Relaxed;
                let mut map = m.map.write().unwrap_or_else(|p| p.into_inner());
                for (s, h) in fresh.into_iter().filter(|(s, _)| s.len() <= HashMemo::MAX_VALUE_BYTES) {
                    // Key bytes plus the hash and the map's own overhead, roughly.
                    let cost = s.len() + 48;
                    if m.bytes.load(Relaxed) + cost > HashMemo::MAX_BYTES {
                        break;
                    }
                    if map.insert(s.into(), h).is_none() {
                        m.bytes.fetch_add(cost, Relaxed);
                    }
                }
            }
        }
        _ => {
            let mut buf = String::with_capacity(64);
            let mut bytes = [0u8; FAST_BYTES];
            for v in values {
                match v {
                    Some(s) => match mask_ascii(rule, s.as_bytes(), &mut bytes) {
                        Some(n) => out.push(&bytes[..n])?,
                        None => {
                            rule.apply_into(s, &mut buf);
                            out.push(buf.as_bytes())?;
                        }
                    },
                    None => out.views.push(0),
                }
            }
        }
    }
    out.finish(nulls)
}

/// Longest value [`mask_ascii`] masks in place.
const FAST_BYTES: usize = 64;

/// The common case of the per-value masks, byte by byte into `out`: ASCII values of at most
/// [`FAST_BYTES`] bytes under `last_four` or `email_partial`. Returns the masked length, or `None`
/// for anything else (which [`MaskRule::apply_into`] handles; both give the same text).
fn mask_ascii(rule: MaskRule, v: &[u8], out: &mut [u8; FAST_BYTES]) -> Option<usize> {
    if v.len() > FAST_BYTES || !v.is_ascii() {
        return None;
    }
    match rule {
        MaskRule::LastFour => {
            let alnum = v.iter().filter(|b| b.is_ascii_alphanumeric()).count();
            let keep_from = if alnum > 4 { alnum - 4 } else { usize::MAX };
            let mut seen = 0;
            for (o, &b) in out.iter_mut().zip(v) {
                *o = if b.is_ascii_alphanumeric() {
                    seen += 1;
                    if seen > keep_from { b } else { b'*' }
                } else {
                    b
                };
            }
            Some(v.len())
        }
        MaskRule::EmailPartial => {
            let at = v.iter().rposition(|&b| b == b'@')?;
            let (local, domain) = (&v[..at], &v[at + 1..]);
            let dot = domain.iter().rposition(|&b| b == b'.')?;
            let tld = &domain[dot + 1..];
            let first = *local.first()?;
            let text = [&[first][..], b"***@***.", tld];
            let mut n = 0;
            for part in text {
                out.get_mut(n..n + part.len())?.copy_from_slice(part);
                n += part.len();
            }
            Some(n)
        }
        _ => None,
    }
}

/// Applies a mask to a whole column.
pub fn mask_array(rule: MaskRule, input: &ArrayRef) -> DfResult<ArrayRef> {
    mask_array_with(rule, input, None)
}

/// [`mask_array`] with the query's memo of hashes.
fn mask_array_with(rule: MaskRule, input: &ArrayRef, memo: Option<&HashMemo>) -> DfResult<ArrayRef> {
    let n = input.len();
    let nulls = input.logical_nulls();
    match rule {
        // Constant masks: only the NULLs of the input matter; one view for every row.
        MaskRule::Full | MaskRule::Omit | MaskRule::Redact => {
            let text = if rule == MaskRule::Redact { REDACTED } else { FULL };
            let view = make_view(text.as_bytes(), 0, 0);
            Ok(Arc::new(StringViewArray::try_new(ScalarBuffer::from(vec![view; n]), Vec::new(), nulls)?))
        }
        _ => match input.data_type() {
            DataType::Utf8 => mask_strings(rule, input.as_string::<i32>().iter(), nulls, memo),
            DataType::LargeUtf8 => mask_strings(rule, input.as_string::<i64>().iter(), nulls, memo),
            DataType::Utf8View => mask_strings(rule, input.as_string_view().iter(), nulls, memo),
            _ => {
                let text = cast(input, &DataType::Utf8)?;
                let Some(a) = text.as_any().downcast_ref::<StringArray>() else {
                    return exec_err!("mask: expected text after cast");
                };
                mask_strings(rule, a.iter(), nulls, memo)
            }
        },
    }
}

#[derive(Debug)]
struct MaskUdf {
    rule: MaskRule,
    signature: Signature,
    memo: Option<Arc<HashMemo>>,
}

// Two mask UDFs are the same function when their rules are: the memo is a cache, not identity.
impl PartialEq for MaskUdf {
    fn eq(&self, other: &Self) -> bool {
        self.rule == other.rule
    }
}

impl Eq for MaskUdf {}

impl std::hash::Hash for MaskUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.rule.hash(state);
    }
}

impl ScalarUDFImpl for MaskUdf {
    fn name(&self) -> &str {
        match self.rule {
            MaskRule::Hash16 => "moat_mask_hash16",
            MaskRule::LastFour => "moat_mask_last_four",
            MaskRule::Redact => "moat_mask_redact",
            MaskRule::EmailPartial => "moat_mask_email_partial",
            MaskRule::Full | MaskRule::Omit => "moat_mask_full",
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8View)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("mask takes one argument");
        };
        let array = arg.to_array(args.number_rows)?;
        Ok(ColumnarValue::Array(mask_array_with(self.rule, &array, self.memo.as_deref())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_examples() {
        assert_eq!(MaskRule::LastFour.apply("123-45-6789"), "***-**-6789");
        assert_eq!(MaskRule::LastFour.apply("4242424242424242"), "************4242");
        assert_eq!(MaskRule::LastFour.apply("1234"), "****", "short values are hidden whole");
        assert_eq!(MaskRule::EmailPartial.apply("john.doe@company.com"), "j***@***.com");
        assert_eq!(MaskRule::EmailPartial.apply("not an email"), "****");
        assert_eq!(MaskRule::Redact.apply("+1 555 0100"), "[REDACTED]");
        assert_eq!(MaskRule::Full.apply("anything"), "****");
        let h = MaskRule::Hash16.apply("Jane Doe");
        assert_eq!(h.len(), 16);
        assert_eq!(h, MaskRule::Hash16.apply("Jane Doe"), "deterministic: joins work");
        assert_ne!(h, MaskRule::Hash16.apply("Jane Doe "));
        assert_eq!(&h, &hex::encode(Sha256::digest(b"Jane Doe"))[..16]);
    }

    #[test]
    fn arrays_keep_nulls_and_cast() {
        use datafusion::arrow::array::Int64Array;
        let a: ArrayRef = Arc::new(Int64Array::from(vec![Some(123456), None, Some(7)]));
        let m = mask_array(MaskRule::LastFour, &a).expect("mask");
        let m = m.as_string_view();
        assert_eq!(m.value(0), "**3456");
        assert!(m.is_null(1));
        assert_eq!(m.value(2), "*");
    }

    #[test]
    fn every_text_layout_masks_alike() {
        use datafusion::arrow::array::{Int64Array, LargeStringArray, StringViewArray};
        let values =
            vec![Some("Ann Canary"), None, Some("123-45-6789"), Some("ann@acme.com"), Some("Ann Canary"), Some("Zoë Ünïcode 1234567")];
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(values.clone())),
            Arc::new(LargeStringArray::from(values.clone())),
            Arc::new(StringViewArray::from(values.clone())),
        ];
        for rule in [MaskRule::Hash16, MaskRule::LastFour, MaskRule::Redact, MaskRule::EmailPartial, MaskRule::Full] {
            let expected: Vec<Option<String>> = values.iter().map(|v| v.map(|s| rule.apply(s))).collect();
            for a in &arrays {
                let m = mask_array(rule, a).expect("mask");
                let got: Vec<Option<String>> = m.as_string_view().iter().map(|v| v.map(str::to_owned)).collect();
                assert_eq!(got, expected, "{rule:?} over {}", a.data_type());
            }
        }
        assert_eq!(MaskRule::LastFour.apply("Zoë Ünïcode 1234567"), "*** ******* ***4567");
        let n: ArrayRef = Arc::new(Int64Array::from(vec![Some(5), None]));
        let m = mask_array(MaskRule::Redact, &n).expect("mask");
        assert_eq!((m.as_string_view().value(0), m.is_null(1)), ("[REDACTED]", true));
    }

    #[test]
    fn the_fast_paths_mask_exactly_as_the_general_one() {
        let mut out = [0u8; FAST_BYTES];
        for v in [
            "123-45-6789",
            "4242424242424242",
            "1234",
            "12345",
            "",
            "--",
            "ab-cd",
            "john.doe@company.com",
            "a@b.c",
            "@b.com",
            "x@nodot",
            "x@y.",
            "a@b@c.org",
            "first.last+tag@sub.example.co.uk",
            "not an email",
        ] {
            for rule in [MaskRule::LastFour, MaskRule::EmailPartial] {
                match mask_ascii(rule, v.as_bytes(), &mut out) {
                    Some(n) => assert_eq!(std::str::from_utf8(&out[..n]).expect("ascii"), rule.apply(v), "{rule:?} {v:?}"),
                    None => assert!(
                        rule == MaskRule::EmailPartial && rule.apply(v) == FULL,
                        "{rule:?} {v:?}: only non-addresses leave the fast path"
                    ),
                }
            }
        }
        assert_eq!(mask_ascii(MaskRule::LastFour, "é".as_bytes(), &mut out), None, "non-ASCII takes the general path");
        assert_eq!(mask_ascii(MaskRule::LastFour, &[b'1'; FAST_BYTES + 1], &mut out), None);
    }

    #[test]
    fn the_memo_gives_the_same_hashes_across_batches() {
        let memo = HashMemo::default();
        let first: ArrayRef = Arc::new(StringArray::from(vec![Some("Ann"), Some("Bob"), None, Some("Ann")]));
        let second: ArrayRef = Arc::new(StringArray::from(vec![Some("Bob"), Some("Cy")]));
        let a = mask_array_with(MaskRule::Hash16, &first, Some(&memo)).expect("mask");
        let b = mask_array_with(MaskRule::Hash16, &second, Some(&memo)).expect("mask");
        let (a, b) = (a.as_string_view(), b.as_string_view());
        assert_eq!(a.value(0), hash16("Ann").as_str());
        assert_eq!((a.value(3), a.is_null(2)), (a.value(0), true));
        assert_eq!(b.value(0), a.value(1), "a value seen in an earlier batch hashes alike");
        assert_eq!(b.value(1), hash16("Cy").as_str());
        assert_eq!(memo.map.read().expect("lock").len(), 3);
    }

    #[test]
    fn names_roundtrip() {
        for r in [MaskRule::Hash16, MaskRule::LastFour, MaskRule::Redact, MaskRule::EmailPartial, MaskRule::Full, MaskRule::Omit] {
            assert_eq!(MaskRule::parse(r.as_str()), Some(r));
        }
    }
}
