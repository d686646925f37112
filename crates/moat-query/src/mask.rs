//! Mask functions (contract: "Classification and masking defaults") and their vectorised
//! DataFusion UDFs. Every mask yields text (a string-view array: short masks need no data
//! buffer); NULL stays NULL; values of other types are cast to text first. The UDFs are used only
//! inside governed scans and are not registered for SQL.

use std::sync::Arc;

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

    /// The DataFusion UDF applying this mask.
    pub fn udf(self) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::new_from_impl(MaskUdf { rule: self, signature: Signature::any(1, Volatility::Immutable) }))
    }
}

const FULL: &str = "****";
const REDACTED: &str = "[REDACTED]";

/// 16 lower-case hex characters: the first 8 bytes of SHA-256.
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

/// Masks every value of a text array (NULL stays NULL; the view of a NULL is empty).
fn mask_strings<'a>(
    rule: MaskRule,
    values: impl ExactSizeIterator<Item = Option<&'a str>>,
    nulls: Option<NullBuffer>,
) -> DfResult<ArrayRef> {
    let mut out = Views::with_capacity(values.len());
    match rule {
        MaskRule::Hash16 => {
            // Repeated values (names) are hashed and stored once per batch.
            let mut memo: HashMap<&str, u128> = HashMap::default();
            for v in values {
                let view = match v {
                    Some(s) => match memo.get(s) {
                        Some(view) => *view,
                        None => {
                            let view = out.store(hash16(s).as_str().as_bytes())?;
                            memo.insert(s, view);
                            view
                        }
                    },
                    None => 0,
                };
                out.views.push(view);
            }
        }
        _ => {
            let mut buf = String::with_capacity(64);
            for v in values {
                match v {
                    Some(s) => {
                        rule.apply_into(s, &mut buf);
                        out.push(buf.as_bytes())?;
                    }
                    None => out.views.push(0),
                }
            }
        }
    }
    out.finish(nulls)
}

/// Applies a mask to a whole column.
pub fn mask_array(rule: MaskRule, input: &ArrayRef) -> DfResult<ArrayRef> {
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
            DataType::Utf8 => mask_strings(rule, input.as_string::<i32>().iter(), nulls),
            DataType::LargeUtf8 => mask_strings(rule, input.as_string::<i64>().iter(), nulls),
            DataType::Utf8View => mask_strings(rule, input.as_string_view().iter(), nulls),
            _ => {
                let text = cast(input, &DataType::Utf8)?;
                let Some(a) = text.as_any().downcast_ref::<StringArray>() else {
                    return exec_err!("mask: expected text after cast");
                };
                mask_strings(rule, a.iter(), nulls)
            }
        },
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct MaskUdf {
    rule: MaskRule,
    signature: Signature,
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
        Ok(ColumnarValue::Array(mask_array(self.rule, &array)?))
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
    fn names_roundtrip() {
        for r in [MaskRule::Hash16, MaskRule::LastFour, MaskRule::Redact, MaskRule::EmailPartial, MaskRule::Full, MaskRule::Omit] {
            assert_eq!(MaskRule::parse(r.as_str()), Some(r));
        }
    }
}
