//! Engine messages can quote values (`Cannot cast string '123-45-6789' to ...`). Before a message
//! leaves moat, quoted literals and long digit runs are replaced, so an error never carries a
//! data value.

/// Replaces `'…'` literals with `'…'` and runs of 4+ digits with `#`.
pub fn scrub(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars().peekable();
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if digits.len() >= 4 {
            out.push('#');
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        flush(&mut digits, &mut out);
        if c == '\'' {
            // Skip to the closing quote ('' inside is an escaped quote).
            loop {
                match chars.next() {
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                    }
                    Some('\'') | None => break,
                    Some(_) => {}
                }
            }
            out.push_str("'…'");
        } else {
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::scrub;

    #[test]
    fn literals_and_numbers_go() {
        let m = scrub("Cast error: Cannot cast string '123-45-6789' to value of Int64 type");
        assert!(!m.contains("6789") && !m.contains("123-45"), "{m}");
        assert_eq!(scrub("value 4242424242424242 at line 12"), "value # at line 12");
        assert_eq!(scrub("x = 'a''b' done"), "x = '…' done");
        assert_eq!(scrub("no values here"), "no values here");
    }
}
