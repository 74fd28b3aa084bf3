//! Percent-decoding of paths and query strings.

/// Percent-decodes `text`; with `slashes` false, `%2F` stays escaped. `None` for a broken
/// escape or invalid UTF-8.
pub fn decode(text: &str, slashes: bool) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let byte = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if byte == b'/' && !slashes {
                out.extend_from_slice(&bytes[i..i + 3]);
            } else {
                out.push(byte);
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A query-string component: `+` is a space, then percent-decoding. `None` when broken.
pub fn decode_query(text: &str) -> Option<String> {
    decode(&text.replace('+', " "), true)
}

/// The `key=value` pairs of a query string, decoded; a key without `=` has an empty value.
pub fn query_pairs(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match (decode_query(key), decode_query(value)) {
                (Some(key), Some(value)) => Ok((key, value)),
                _ => Err(format!(
                    "the query parameter {pair:?} is not valid percent-encoded UTF-8"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_paths_and_queries() {
        assert_eq!(decode("a%20b%2Fc", true).as_deref(), Some("a b/c"));
        assert_eq!(decode("a%20b%2Fc", false).as_deref(), Some("a b%2Fc"));
        assert_eq!(decode("%zz", true), None);
        assert_eq!(decode("%", true), None);
        assert_eq!(decode("%ff", true), None, "not UTF-8");
        assert_eq!(
            query_pairs("a.b=1&x=2&x=3&flag&q=a+b%26c").unwrap(),
            [
                ("a.b", "1"),
                ("x", "2"),
                ("x", "3"),
                ("flag", ""),
                ("q", "a b&c")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert!(query_pairs("a=%zz").unwrap_err().contains("a=%zz"));
    }
}
