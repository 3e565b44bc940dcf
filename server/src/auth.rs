//! Bearer tokens: 32 random bytes shown once as hex; the server keeps only their SHA-256.

use crate::store::{Device, ServerStore, StoreError};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// A new random bearer token (64 hex digits).
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex(&bytes))
}

/// The SHA-256 of a token, as the store keeps it.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Why a device could not be created.
#[derive(Debug)]
pub enum AddDeviceError {
    /// The operating system gave no random bytes.
    Random(getrandom::Error),
    /// The store failed.
    Store(StoreError),
    /// The scope is empty.
    EmptyScope,
}

impl std::fmt::Display for AddDeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddDeviceError::Random(e) => write!(f, "cannot get random bytes for a token: {e}"),
            AddDeviceError::Store(e) => e.fmt(f),
            AddDeviceError::EmptyScope => f.write_str("the scope must not be empty"),
        }
    }
}

impl std::error::Error for AddDeviceError {}

/// Creates a device of `scope` and returns it with its bearer token (shown once, never stored).
pub fn add_device(
    store: &dyn ServerStore,
    scope: &str,
) -> Result<(Device, String), AddDeviceError> {
    if scope.is_empty() {
        return Err(AddDeviceError::EmptyScope);
    }
    let token = new_token().map_err(AddDeviceError::Random)?;
    let device = store
        .add_device(scope, &hash_token(&token), crate::now_ms())
        .map_err(AddDeviceError::Store)?;
    Ok((device, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_and_hash_is_sha256() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            hex(&hash_token("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
