//! The one generator of unique names: a random version 4 UUID (RFC 9562),
//! 128 bits of which 122 are drawn from the operating system per name.
//!
//! Operation names, ByteStream upload ids and marker files all use it.
//! Nothing is derived from the pid, a counter or the clock: a pid repeats
//! across containers and restarts, and an operation name must not be
//! guessable from another.

/// The operating system gave no random bytes.
#[derive(Debug, thiserror::Error)]
#[error("failed to draw random bytes from the operating system")]
pub struct RandomnessError(#[source] getrandom::Error);

/// A fresh name, `xxxxxxxx-xxxx-4xxx-Vxxx-xxxxxxxxxxxx` (V one of 8, 9,
/// a, b).
pub fn uuid_v4() -> Result<String, RandomnessError> {
    let mut bits = [0u8; 16];
    getrandom::fill(&mut bits).map_err(RandomnessError)?;
    Ok(uuid_v4_text(bits))
}

/// The text form of a version 4 UUID whose other 122 bits are `bits`'.
fn uuid_v4_text(mut bits: [u8; 16]) -> String {
    bits[6] = (bits[6] & 0x0f) | 0x40;
    bits[8] = (bits[8] & 0x3f) | 0x80;
    let hex: String = bits.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The 128 bits of a UUID in text form.
    fn bits(id: &str) -> u128 {
        u128::from_str_radix(&id.replace('-', ""), 16).unwrap()
    }

    /// Where the version (4 bits) and variant (2 bits) sit: all but these
    /// 122 bits are random.
    const FIXED: u128 = (0xf << 76) | (0b11 << 62);

    #[test]
    fn names_are_uuid_v4_text_and_never_repeat() {
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let id = uuid_v4().unwrap();
            assert_eq!(id.len(), 36, "{id}");
            let groups: Vec<usize> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert!(
                id.bytes()
                    .all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
                "{id}"
            );
            assert_eq!(&id[14..15], "4", "version nibble: {id}");
            assert!("89ab".contains(&id[19..20]), "variant: {id}");
            assert!(seen.insert(id), "repeated");
        }
    }

    #[test]
    fn every_random_bit_varies_and_consecutive_names_differ_in_many_bits() {
        let names: Vec<u128> = (0..2000).map(|_| bits(&uuid_v4().unwrap())).collect();
        // Each of the 122 random bits is set in about half the names:
        // 2000 draws, standard deviation 22; 800..1200 is 9 of them, so a
        // sound generator fails this less than once in 10^17 runs, while
        // a counter or a fixed seed fails it at once.
        for bit in (0..128).filter(|b| FIXED & (1 << b) == 0) {
            let ones = names.iter().filter(|n| *n & (1 << bit) != 0).count();
            assert!((800..=1200).contains(&ones), "bit {bit} set {ones} times");
        }
        // Two names differ in 61 of the random bits on average
        // (deviation 5.5); a name predictable from the previous one
        // differs in few.
        for pair in names.windows(2) {
            let differing = ((pair[0] ^ pair[1]) & !FIXED).count_ones();
            assert!(differing >= 25, "names differ in {differing} bits");
        }
        assert!(names.iter().all(|n| (n >> 76) & 0xf == 4));
    }
}
