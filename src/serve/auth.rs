//! Bearer-token check for the /v1 routes.
use sha2::{Digest, Sha256};

/// Whether an `Authorization` header value carries `key`. The comparison runs over fixed-size
/// digests so its time does not depend on how much of the key a guess gets right.
pub fn authorized(header: Option<&[u8]>, key: &str) -> bool {
    let Some(h) = header else { return false };
    let token = match h.strip_prefix(b"Bearer ").or_else(|| h.strip_prefix(b"bearer ")) {
        Some(t) => t,
        None => return false,
    };
    let a = Sha256::digest(token);
    let b = Sha256::digest(key.as_bytes());
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        assert!(authorized(Some(b"Bearer sk-1"), "sk-1"));
        assert!(!authorized(Some(b"Bearer sk-2"), "sk-1"));
        assert!(!authorized(Some(b"sk-1"), "sk-1"));
        assert!(!authorized(None, "sk-1"));
        assert!(!authorized(Some(b"Bearer "), "sk-1"));
    }
}
