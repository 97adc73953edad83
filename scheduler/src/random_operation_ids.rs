//! [`OperationIds`] for production: random UUIDs (version 4), drawn from
//! the operating system for each name.
//!
//! A name is all a client needs to watch or cancel an operation, so it
//! must not be guessable from another: 122 random bits per name, one
//! draw each, and nothing derived from a seed, a counter or the clock.
//! Unique across restarts too, so that a client holding an old name gets
//! NOT_FOUND rather than somebody else's operation.

use crate::operation_ids::{OperationIdError, OperationIds};

/// Names `operations/xxxxxxxx-xxxx-4xxx-Vxxx-xxxxxxxxxxxx` (RFC 9562
/// version 4, V one of 8, 9, a, b).
#[derive(Debug, Default)]
pub struct RandomOperationIds;

impl RandomOperationIds {
    pub fn new() -> Self {
        RandomOperationIds
    }
}

/// The text form of a version 4 UUID whose other 122 bits are `bits`'.
fn uuid_v4(mut bits: [u8; 16]) -> String {
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

impl OperationIds for RandomOperationIds {
    fn next_name(&self) -> Result<String, OperationIdError> {
        let mut bits = [0u8; 16];
        getrandom::fill(&mut bits).map_err(OperationIdError::Randomness)?;
        Ok(format!("operations/{}", uuid_v4(bits)))
    }
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
        let ids = RandomOperationIds::new();
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let name = ids.next_name().unwrap();
            let id = name.strip_prefix("operations/").unwrap();
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
            assert!(seen.insert(id.to_owned()), "{id} repeated");
        }
    }

    #[test]
    fn every_random_bit_varies_and_consecutive_names_differ_in_many_bits() {
        let ids = RandomOperationIds::new();
        let names: Vec<u128> = (0..2000)
            .map(|_| {
                bits(
                    ids.next_name()
                        .unwrap()
                        .strip_prefix("operations/")
                        .unwrap(),
                )
            })
            .collect();
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
