//! Byte-string equality for the request path.
//!
//! On wasm32, slice and string `==` is `memcmp`, which the Rust toolchain implements there as
//! a byte-by-byte loop; the filter compares whole tokens (~700 bytes) and counter names on
//! every request, so it compares 8 bytes at a time instead.

/// `a == b`, 8 bytes at a time.
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (words_a, rest_a) = a.as_chunks::<8>();
    let (words_b, rest_b) = b.as_chunks::<8>();
    words_a
        .iter()
        .zip(words_b)
        .all(|(x, y)| u64::from_ne_bytes(*x) == u64::from_ne_bytes(*y))
        && rest_a == rest_b
}

#[cfg(test)]
mod tests {
    use super::equal;

    #[test]
    fn is_slice_equality() {
        let a: Vec<u8> = (0..=255).collect();
        for len in [0, 1, 7, 8, 9, 16, 31, 255] {
            assert!(equal(&a[..len], &a[..len]));
            for at in 0..len {
                let mut b = a[..len].to_vec();
                b[at] ^= 1;
                assert!(!equal(&a[..len], &b), "len {len}, byte {at}");
            }
            assert!(!equal(&a[..len], &a[..len + 1]));
        }
    }
}
