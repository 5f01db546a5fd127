//! Secrets that never format.
//!
//! A [`Secret`] has a redacted `Debug`, no `Display`, compares in constant time, is overwritten
//! with zeros when dropped, and only [`Secret::expose`] returns the value. Everything that holds a
//! secret key or token keeps it in one.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A secret string (a secret access key, a session token).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself. Call sites are few and deliberate: signing and verification.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time equality, for comparing signatures and keys.
    pub fn ct_eq(&self, other: &str) -> bool {
        ct_eq(self.0.as_bytes(), other.as_bytes())
    }
}

impl Zeroize for Secret {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Constant-time comparison of two byte strings (the length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
        let shown = format!("{s:?}");
        assert_eq!(shown, "[REDACTED]");
        assert!(!shown.contains("wJalr"));
    }

    #[test]
    fn zeroize_clears_the_value() {
        let mut s = Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
        s.zeroize();
        assert_eq!(s.expose(), "");
        // Dropping zeroizes too: `Secret` is `ZeroizeOnDrop` (a compile-time check).
        fn zeroized_on_drop<T: ZeroizeOnDrop>() {}
        zeroized_on_drop::<Secret>();
    }

    #[test]
    fn compares_in_constant_time_by_value() {
        let s = Secret::new("abc");
        assert!(s.ct_eq("abc"));
        assert!(!s.ct_eq("abd"));
        assert!(!s.ct_eq("ab"));
        assert!(!s.ct_eq(""));
    }
}
