//! Identifiers the store generates: a type prefix and 128 random bits, so they are unguessable
//! and never collide in practice, across processes too.

/// `"<prefix>_<32 hex digits>"`, e.g. `pay_0f3c…`.
pub(crate) fn new_id(prefix: &str) -> String {
    let bits: u128 = rand::random();
    format!("{prefix}_{bits:032x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_have_the_prefix_and_differ() {
        let a = super::new_id("pay");
        let b = super::new_id("pay");
        assert!(a.starts_with("pay_") && a.len() == 4 + 32, "{a}");
        assert_ne!(a, b);
    }
}
