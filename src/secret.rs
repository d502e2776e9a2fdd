//! Secrets: random tokens from the OS generator and their constant-time
//! comparison (hook secrets, the API token).

use subtle::ConstantTimeEq;

/// `bytes` random bytes from the OS generator, as lower-case hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random generator is available");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `presented` is `real`, in time independent of where they differ.
pub fn token_matches(real: &str, presented: &str) -> bool {
    real.len() == presented.len() && bool::from(real.as_bytes().ct_eq(presented.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_and_compared_whole() {
        let t = random_hex(32);
        assert_eq!(t.len(), 64);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(t, random_hex(32));
        assert!(token_matches(&t, &t));
        assert!(!token_matches(&t, &t[..63]));
        assert!(!token_matches(&t, "x"));
    }
}
