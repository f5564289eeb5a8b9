//! Client-side encryption of the S3 mirror's objects (`encrypt_key=FILE`): the key file, the
//! key id shown by status and written in headers, and AES-256-GCM over object bodies.
//!
//! A sealed body is a fresh random 12-byte nonce followed by the ciphertext and its 16-byte
//! tag. The object's header is the associated data, so a header moved to another body, or
//! edited, fails authentication. The key itself is never logged, displayed or stored.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};

/// Size of the key in bytes (AES-256).
pub const KEY_BYTES: usize = 32;

/// Size of the random nonce at the start of a sealed body.
pub const NONCE_BYTES: usize = 12;

/// Size of the authentication tag at the end of a sealed body.
pub const TAG_BYTES: usize = 16;

/// Largest key file read: 64 hex digits and a line ending, with room for a `\r\n`.
const MAX_KEY_FILE_BYTES: u64 = 66;

/// Reason a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path:?}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "key file {path:?} has mode {mode:04o}, so group or others may read it; run chmod 600 \
         on it"
    )]
    Readable { path: String, mode: u32 },
    #[error(
        "key file {path:?} does not contain a 256-bit key: expected 64 hex digits on one line \
         (as written by `openssl rand -hex 32`), found {found}"
    )]
    Format { path: String, found: String },
}

/// The key of `encrypt_key`, ready to seal and open object bodies.
#[derive(Clone)]
pub struct Seal {
    cipher: Aes256Gcm,
    key_id: u64,
}

impl fmt::Debug for Seal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seal {{ key_id: {:016x} }}", self.key_id)
    }
}

/// Failure to open a sealed body: a wrong key, or bytes changed after sealing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFailed;

impl Seal {
    /// Reads the key file at `path` and prepares the cipher.
    pub fn load(path: &Path) -> Result<Seal, KeyFileError> {
        Ok(Seal::from_key(&read_key_file(path)?))
    }

    /// Prepares the cipher for `key`.
    pub fn from_key(key: &[u8; KEY_BYTES]) -> Seal {
        Seal {
            cipher: Aes256Gcm::new(key.into()),
            key_id: key_id(key),
        }
    }

    /// Returns the id of the key: the first 8 bytes of a SHA-256 of the key, so that a wrong
    /// key is named without revealing anything about the key.
    pub fn key_id(&self) -> u64 {
        self.key_id
    }

    /// Encrypts `plaintext` with a fresh random nonce, authenticating `header` with it, and
    /// returns nonce, ciphertext and tag.
    pub fn seal(&self, header: &[u8], plaintext: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_BYTES];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut nonce)?;
        let payload = Payload {
            msg: plaintext,
            aad: header,
        };
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .map_err(|_| std::io::Error::other("AES-GCM refused the plaintext length"))?;
        let mut sealed = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Decrypts a body that [`Seal::seal`] returned for the same `header`.
    pub fn open(&self, header: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenFailed> {
        if sealed.len() < NONCE_BYTES + TAG_BYTES {
            return Err(OpenFailed);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
        let payload = Payload {
            msg: ciphertext,
            aad: header,
        };
        self.cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| OpenFailed)
    }
}

/// Returns the key id of `key`, as [`Seal::key_id`] does.
fn key_id(key: &[u8; KEY_BYTES]) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"logmirror encrypt_key id\0");
    hasher.update(key);
    let digest = hasher.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(id)
}

/// Reads a key file: 64 hex digits, optionally followed by a line ending, in a file that
/// neither group nor others may read.
pub fn read_key_file(path: &Path) -> Result<[u8; KEY_BYTES], KeyFileError> {
    let shown = path.display().to_string();
    let read_error = |source| KeyFileError::Read {
        path: shown.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mode = file.metadata().map_err(read_error)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Readable {
            path: shown,
            mode: mode & 0o7777,
        });
    }
    let mut text = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(read_error)?;
    let digits = text
        .strip_suffix(b"\n")
        .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
        .unwrap_or(&text);
    parse_hex_key(digits).ok_or_else(|| KeyFileError::Format {
        path: shown,
        found: describe_content(&text),
    })
}

fn parse_hex_key(digits: &[u8]) -> Option<[u8; KEY_BYTES]> {
    if digits.len() != 2 * KEY_BYTES {
        return None;
    }
    let mut key = [0u8; KEY_BYTES];
    for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(key)
}

/// Describes a key file's content without echoing it, since it may be a key in another form.
fn describe_content(text: &[u8]) -> String {
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        return format!("more than {MAX_KEY_FILE_BYTES} bytes");
    }
    let lines = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let hex = text.iter().filter(|b| b.is_ascii_hexdigit()).count();
    format!(
        "{} bytes, {hex} of them hex digits, on {lines} lines",
        text.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn write_key(dir: &Path, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join("key");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn key_file_accepted() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            KEY_HEX.to_string(),
            format!("{KEY_HEX}\n"),
            format!("{KEY_HEX}\r\n"),
        ] {
            let key = read_key_file(&write_key(dir.path(), &text, 0o600)).unwrap();
            assert_eq!(key[1], 1);
            assert_eq!(key[31], 0x1f);
        }
        let upper = KEY_HEX.to_uppercase();
        assert!(read_key_file(&write_key(dir.path(), &upper, 0o400)).is_ok());
    }

    #[test]
    fn key_file_rejects_readable_modes() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604] {
            let path = write_key(dir.path(), KEY_HEX, mode);
            let error = read_key_file(&path).unwrap_err().to_string();
            assert!(error.contains(&format!("mode {mode:04o}")), "{error}");
            assert!(error.contains("chmod 600"), "{error}");
        }
    }

    #[test]
    fn key_file_rejects_wrong_length() {
        let dir = tempfile::tempdir().unwrap();
        for text in [&KEY_HEX[..62], &format!("{KEY_HEX}00"), "", "zz"] {
            let path = write_key(dir.path(), text, 0o600);
            let error = read_key_file(&path).unwrap_err().to_string();
            assert!(error.contains("64 hex digits"), "{error}");
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(!error.contains(&KEY_HEX[..20]), "{error}");
        }
    }

    #[test]
    fn seal_round_trips_and_authenticates_header() {
        let key = parse_hex_key(KEY_HEX.as_bytes()).unwrap();
        let seal = Seal::from_key(&key);
        let sealed = seal.seal(b"header", b"secret frames").unwrap();
        assert_eq!(sealed.len(), NONCE_BYTES + 13 + TAG_BYTES);
        assert_eq!(seal.open(b"header", &sealed).unwrap(), b"secret frames");
        assert_eq!(seal.open(b"headex", &sealed), Err(OpenFailed));
        let mut flipped = sealed.clone();
        flipped[NONCE_BYTES] ^= 1;
        assert_eq!(seal.open(b"header", &flipped), Err(OpenFailed));

        let mut other_key = key;
        other_key[0] ^= 1;
        let other = Seal::from_key(&other_key);
        assert_ne!(other.key_id(), seal.key_id());
        assert_eq!(other.open(b"header", &sealed), Err(OpenFailed));
    }

    #[test]
    fn seal_uses_fresh_nonces() {
        let seal = Seal::from_key(&[7; KEY_BYTES]);
        let first = seal.seal(b"h", b"same").unwrap();
        let second = seal.seal(b"h", b"same").unwrap();
        assert_ne!(first, second);
    }
}
