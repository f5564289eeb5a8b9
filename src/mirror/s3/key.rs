//! Keys of the readable copies: the reversible mapping between a file's path in the backing
//! tree and the key of its copy in the bucket. Nothing here talks to the store.
//!
//! A path is raw bytes, and a key is UTF-8 of at most 1024 bytes. So each path component is
//! kept where it is printable UTF-8, and every other byte becomes `%XX` (two uppercase hex
//! digits):
//!
//! - `%` itself, so that `%` always starts an escape;
//! - bytes that are not part of valid UTF-8;
//! - control characters (U+0000 to U+001F, U+007F to U+009F) and the noncharacters U+FFFE and
//!   U+FFFF, which an XML listing response cannot carry, as the `%XX` of each UTF-8 byte;
//! - the leading `.` of a first component named `.logmirror`, so that no file key starts
//!   with `PREFIX/.logmirror/`, the folder of the mirror's own objects.
//!
//! Decoding accepts only keys that encoding produces (the canonical form), so the mapping is
//! one-to-one in both directions.

use std::fmt::Write as _;

use crate::config::STATE_DIR_NAME;
use crate::journal::RelPath;

/// Maximum length of an S3 key in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Reason a path has no key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the root of the tree has no key")]
    Root,
    #[error("its key would have {len} bytes, and S3 allows at most {MAX_KEY_BYTES}")]
    TooLong { len: usize },
}

/// Returns the text that every copy key of the mirror at `prefix` starts with: `PREFIX/`, or
/// nothing for a mirror at the bucket's root.
pub fn copy_prefix(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}

/// Returns the key prefix of the mirror's own objects (journal and others), which no copy
/// key can start with.
pub fn reserved_prefix(prefix: &str) -> String {
    format!("{}{STATE_DIR_NAME}/", copy_prefix(prefix))
}

/// Returns the key of the copy of `path` in the mirror at `prefix`.
pub fn path_to_key(prefix: &str, path: &RelPath) -> Result<String, KeyError> {
    if path.is_root() {
        return Err(KeyError::Root);
    }
    let mut key = copy_prefix(prefix);
    key.push_str(&encode_path(path));
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong { len: key.len() });
    }
    Ok(key)
}

/// Returns the path whose copy has `key` in the mirror at `prefix`, or `None` when no path
/// maps to `key`: a key outside the prefix, in the reserved folder, or not in canonical form.
pub fn key_to_path(prefix: &str, key: &str) -> Option<RelPath> {
    let encoded = key.strip_prefix(&copy_prefix(prefix))?;
    let path = RelPath::from_bytes(&decode_escapes(encoded)?)?;
    if path.is_root() || encode_path(&path) != encoded {
        return None;
    }
    Some(path)
}

/// Encodes every component of a path (not the root) and joins them with `/`.
fn encode_path(path: &RelPath) -> String {
    let mut out = String::with_capacity(path.as_bytes().len());
    for (index, component) in path.as_bytes().split(|b| *b == b'/').enumerate() {
        if index > 0 {
            out.push('/');
        }
        let rest = if index == 0 && component == STATE_DIR_NAME.as_bytes() {
            out.push_str("%2E");
            &component[1..]
        } else {
            component
        };
        encode_bytes(rest, &mut out);
    }
    out
}

/// Appends `bytes` to `out`, keeping printable UTF-8 other than `%` and escaping the rest.
fn encode_bytes(mut bytes: &[u8], out: &mut String) {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                encode_text(text, out);
                return;
            }
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                encode_text(std::str::from_utf8(valid).expect("valid up to here"), out);
                // An incomplete sequence at the end has no error_len; all of it is invalid.
                let invalid = e.error_len().unwrap_or(rest.len());
                escape(&rest[..invalid], out);
                bytes = &rest[invalid..];
            }
        }
    }
}

fn encode_text(text: &str, out: &mut String) {
    for c in text.chars() {
        if must_escape(c) {
            let mut buf = [0u8; 4];
            escape(c.encode_utf8(&mut buf).as_bytes(), out);
        } else {
            out.push(c);
        }
    }
}

fn must_escape(c: char) -> bool {
    c == '%' || c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}'
}

fn escape(bytes: &[u8], out: &mut String) {
    for b in bytes {
        let _ = write!(out, "%{b:02X}");
    }
}

/// Replaces each `%XX` (uppercase hex) with its byte; `None` for a `%` that does not start
/// such an escape.
fn decode_escapes(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let high = hex_digit(*bytes.get(i + 1)?)?;
        let low = hex_digit(*bytes.get(i + 2)?)?;
        out.push(high << 4 | low);
        i += 3;
    }
    Some(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn path(bytes: &[u8]) -> RelPath {
        RelPath::from_bytes(bytes).expect("valid test path")
    }

    #[test]
    fn awkward_names_round_trip() {
        let cases: &[(&[u8], &str)] = &[
            (b"app.log", "host1/app.log"),
            (b"dir/with space.log", "host1/dir/with space.log"),
            (
                "caf\u{e9}/\u{65e5}\u{672c}.log".as_bytes(),
                "host1/caf\u{e9}/\u{65e5}\u{672c}.log",
            ),
            (b"100%.log", "host1/100%25.log"),
            (b"%2E", "host1/%252E"),
            (b"a+b#c?d&e=f", "host1/a+b#c?d&e=f"),
            (b"line\nbreak\ttab", "host1/line%0Abreak%09tab"),
            (b"del\x7f", "host1/del%7F"),
            (b"latin1-\xe9t\xe9", "host1/latin1-%E9t%E9"),
            (b"cut-\xe2\x82", "host1/cut-%E2%82"),
            (b"overlong-\xc0\xaf", "host1/overlong-%C0%AF"),
            (b"\xff\xfe", "host1/%FF%FE"),
            ("c1-\u{85}".as_bytes(), "host1/c1-%C2%85"),
            ("nonchar-\u{ffff}".as_bytes(), "host1/nonchar-%EF%BF%BF"),
            (b".logmirror", "host1/%2Elogmirror"),
            (
                b".logmirror/journal/1.lmj",
                "host1/%2Elogmirror/journal/1.lmj",
            ),
            (b".logmirrorx", "host1/.logmirrorx"),
            (b"sub/.logmirror/x", "host1/sub/.logmirror/x"),
            (b".hidden", "host1/.hidden"),
        ];
        for (bytes, key) in cases {
            let p = path(bytes);
            assert_eq!(path_to_key("host1", &p).as_deref(), Ok(*key), "{p:?}");
            assert_eq!(key_to_path("host1", key), Some(p.clone()), "{key:?}");
        }
    }

    #[test]
    fn bucket_root_prefix() {
        let p = path(b"logs/a.log");
        assert_eq!(path_to_key("", &p).as_deref(), Ok("logs/a.log"));
        assert_eq!(key_to_path("", "logs/a.log"), Some(p));
        assert_eq!(reserved_prefix(""), ".logmirror/");
        assert_eq!(reserved_prefix("a/b"), "a/b/.logmirror/");
    }

    #[test]
    fn foreign_keys_have_no_path() {
        let cases = [
            "other/app.log",
            "host1/.logmirror/journal/00000000000000000001.lmj",
            "host1/%2elogmirror",
            "host1/%41.log",
            "host1/%2F",
            "host1/a%2Fb",
            "host1/%00",
            "host1/a%",
            "host1/a%4",
            "host1/a%GG",
            "host1/%2Ehidden",
            "host1/a//b",
            "host1/a/",
            "host1/",
            "host1/./a",
            "host1/a/..",
            "host1/line\nbreak",
            "host1/100%.log",
        ];
        for key in cases {
            assert_eq!(key_to_path("host1", key), None, "{key:?}");
        }
    }

    #[test]
    fn long_paths_have_no_key() {
        let p = path("é".repeat(509).as_bytes());
        assert_eq!(path_to_key("host1", &p).map(|k| k.len()), Ok(1024));
        let p = path("é".repeat(510).as_bytes());
        assert_eq!(
            path_to_key("host1", &p),
            Err(KeyError::TooLong { len: 1026 })
        );
        let p = path(&[0xff; 400]);
        assert_eq!(
            path_to_key("host1", &p),
            Err(KeyError::TooLong { len: 1206 })
        );
        assert_eq!(path_to_key("host1", &RelPath::root()), Err(KeyError::Root));
    }

    /// Generates a path component: any bytes but `/` and NUL, not `.` or `..`, with a bias
    /// toward the bytes that need escaping.
    fn arb_component() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            Just(b'%'),
            Just(b'.'),
            Just(b'\n'),
            Just(0xff),
            Just(0xc3),
            Just(0xa9),
            1u8..=255,
        ];
        prop_oneof![
            Just(b".logmirror".to_vec()),
            proptest::collection::vec(byte, 1..12),
        ]
        .prop_map(|bytes| {
            bytes
                .into_iter()
                .filter(|b| *b != b'/')
                .collect::<Vec<u8>>()
        })
        .prop_filter("a component is a name", |c| {
            !c.is_empty() && c != b"." && c != b".."
        })
    }

    fn arb_path() -> impl Strategy<Value = RelPath> {
        proptest::collection::vec(arb_component(), 1..4)
            .prop_map(|components| path(&components.join(&b'/')))
    }

    proptest! {
        #[test]
        fn path_key_round_trip(p in arb_path()) {
            let key = path_to_key("pre/fix", &p).expect("short paths have keys");
            prop_assert!(!key.starts_with(&reserved_prefix("pre/fix")));
            prop_assert!(!key.chars().any(char::is_control));
            prop_assert_eq!(key_to_path("pre/fix", &key), Some(p));
        }

        #[test]
        fn distinct_paths_distinct_keys(a in arb_path(), b in arb_path()) {
            let key_a = path_to_key("p", &a).expect("key");
            let key_b = path_to_key("p", &b).expect("key");
            prop_assert_eq!(a == b, key_a == key_b);
        }

        #[test]
        fn decoded_keys_encode_back(key in "[a-z%0-9A-F./]{0,12}") {
            let key = format!("p/{key}");
            if let Some(p) = key_to_path("p", &key) {
                prop_assert_eq!(path_to_key("p", &p), Ok(key));
            }
        }
    }
}
