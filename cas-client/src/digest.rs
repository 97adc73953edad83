//! Digests: what names a blob, and the hashers that check one, for storage
//! and its clients alike.
//!
//! A REAPI `Digest` is a lowercase hex hash plus a size, and means nothing
//! without the digest function that made it, so [`Digest`] here carries
//! its [`DigestFunction`]: two blobs with the same hex under SHA-256 and
//! BLAKE3 are different keys.

use std::fmt;

use corral_proto::reapi;
use corral_proto::reapi::digest_function::Value as ProtoFunction;
use sha2::Digest as _;

use corral_auth::quote::excerpt;

/// Length in bytes of every hash we support. SHA-256 and BLAKE3 (at its
/// default output length) both produce 32 bytes, so a digest is a fixed
/// array rather than a heap string.
pub const HASH_BYTES: usize = 32;

/// The digest functions storage accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestFunction {
    /// REAPI's default: what a request means when it names none.
    Sha256,
    Blake3,
}

/// A digest that failed validation. Every variant is the client's fault,
/// so services map them all to INVALID_ARGUMENT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest function {value} is not supported (supported: SHA256, BLAKE3)")]
    UnsupportedFunction { value: i32 },
    #[error("digest function {name:?} is not supported (supported: sha256, blake3)")]
    UnknownFunctionName { name: String },
    #[error("hash {hash:?} has {len} characters, {function} needs {expected}")]
    HashLength {
        hash: String,
        function: DigestFunction,
        len: usize,
        expected: usize,
    },
    #[error("hash {hash:?} is not lowercase hex")]
    HashNotLowercaseHex { hash: String },
    #[error("size {size} of digest {hash} is negative")]
    NegativeSize { hash: String, size: i64 },
    #[error("size {size:?} of digest {hash} is not a decimal number")]
    SizeNotNumber { hash: String, size: String },
    #[error("size {size} of digest {hash} is larger than any blob can be (2^63 - 1 bytes)")]
    SizeTooLarge { hash: String, size: String },
    #[error("request has no {field}")]
    Missing { field: &'static str },
}

impl DigestFunction {
    /// Every supported function, in the order GetCapabilities lists them.
    pub const ALL: [DigestFunction; 2] = [DigestFunction::Sha256, DigestFunction::Blake3];

    /// The function a request's `digest_function` field names. UNKNOWN (0,
    /// the field left unset) means SHA-256: REAPI lets clients omit the
    /// function when it can be inferred from the hash length, and of our
    /// functions only SHA-256 may be inferred (BLAKE3 must be named).
    pub fn from_proto(value: i32) -> Result<Self, DigestError> {
        match ProtoFunction::try_from(value) {
            Ok(ProtoFunction::Unknown | ProtoFunction::Sha256) => Ok(DigestFunction::Sha256),
            Ok(ProtoFunction::Blake3) => Ok(DigestFunction::Blake3),
            _ => Err(DigestError::UnsupportedFunction { value }),
        }
    }

    pub fn to_proto(self) -> ProtoFunction {
        match self {
            DigestFunction::Sha256 => ProtoFunction::Sha256,
            DigestFunction::Blake3 => ProtoFunction::Blake3,
        }
    }

    /// The lowercase name used in ByteStream resource names and on disk.
    pub fn name(self) -> &'static str {
        match self {
            DigestFunction::Sha256 => "sha256",
            DigestFunction::Blake3 => "blake3",
        }
    }

    /// The function a resource name's `{digest_function}` segment names.
    pub fn from_name(name: &str) -> Result<Self, DigestError> {
        match name {
            "sha256" => Ok(DigestFunction::Sha256),
            "blake3" => Ok(DigestFunction::Blake3),
            _ => Err(DigestError::UnknownFunctionName {
                name: excerpt(name),
            }),
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            DigestFunction::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            DigestFunction::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    /// The digest of `data` under this function.
    pub fn digest_of(self, data: &[u8]) -> Digest {
        let mut hasher = self.hasher();
        hasher.update(data);
        hasher.finish_with_size(data.len() as u64)
    }

    /// The digest of the empty blob, which REAPI requires servers to treat
    /// as always present.
    pub fn empty(self) -> Digest {
        self.digest_of(&[])
    }
}

impl fmt::Display for DigestFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated digest: function, hash and size.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    function: DigestFunction,
    hash: [u8; HASH_BYTES],
    size_bytes: u64,
}

impl Digest {
    pub fn new(function: DigestFunction, hash: [u8; HASH_BYTES], size_bytes: u64) -> Self {
        Self {
            function,
            hash,
            size_bytes,
        }
    }

    /// Parses a hex hash and a size as they appear in a request.
    ///
    /// Uppercase hex is refused rather than folded: REAPI says lowercase,
    /// and accepting both would give one blob two names.
    pub fn parse(
        function: DigestFunction,
        hash: &str,
        size_bytes: i64,
    ) -> Result<Self, DigestError> {
        let expected = HASH_BYTES * 2;
        if hash.len() != expected {
            return Err(DigestError::HashLength {
                hash: excerpt(hash),
                function,
                len: hash.len(),
                expected,
            });
        }
        if !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::HashNotLowercaseHex {
                hash: excerpt(hash),
            });
        }
        let mut bytes = [0u8; HASH_BYTES];
        hex::decode_to_slice(hash, &mut bytes).map_err(|_| DigestError::HashNotLowercaseHex {
            hash: excerpt(hash),
        })?;
        let size_bytes = u64::try_from(size_bytes).map_err(|_| DigestError::NegativeSize {
            hash: excerpt(hash),
            size: size_bytes,
        })?;
        Ok(Self::new(function, bytes, size_bytes))
    }

    /// Parses a proto digest under `function`.
    pub fn from_proto(
        function: DigestFunction,
        digest: &reapi::Digest,
    ) -> Result<Self, DigestError> {
        Self::parse(function, &digest.hash, digest.size_bytes)
    }

    /// Parses an optional proto field, naming the field when it is absent.
    pub fn from_field(
        function: DigestFunction,
        digest: Option<&reapi::Digest>,
        field: &'static str,
    ) -> Result<Self, DigestError> {
        let digest = digest.ok_or(DigestError::Missing { field })?;
        Self::from_proto(function, digest)
    }

    pub fn to_proto(&self) -> reapi::Digest {
        reapi::Digest {
            hash: self.hash_hex(),
            size_bytes: i64::try_from(self.size_bytes).unwrap_or(i64::MAX),
        }
    }

    pub fn function(&self) -> DigestFunction {
        self.function
    }

    pub fn hash(&self) -> &[u8; HASH_BYTES] {
        &self.hash
    }

    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Whether this is the empty blob, which is present without being
    /// stored.
    pub fn is_empty_blob(&self) -> bool {
        self.size_bytes == 0 && *self == self.function.empty()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.function,
            self.hash_hex(),
            self.size_bytes
        )
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A streaming hasher that also counts bytes, so that finishing it yields
/// a whole digest to compare against the one a client claimed.
pub enum Hasher {
    Sha256(sha2::Sha256),
    // Boxed: blake3's hasher is ~2 KiB and would bloat every enum value.
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The digest of everything passed to `update`, whose total length
    /// the caller counted; see [`Verifier`] for the counting version.
    pub fn finish_with_size(self, size_bytes: u64) -> Digest {
        match self {
            Hasher::Sha256(h) => {
                Digest::new(DigestFunction::Sha256, h.finalize().into(), size_bytes)
            }
            Hasher::Blake3(h) => {
                Digest::new(DigestFunction::Blake3, *h.finalize().as_bytes(), size_bytes)
            }
        }
    }
}

/// Hashes and counts a blob as it streams in, and says at the end whether
/// it is the blob its digest promised.
pub struct Verifier {
    expected: Digest,
    hasher: Hasher,
    received: u64,
}

/// Content that is not what its digest says. The client sent it, so this
/// is INVALID_ARGUMENT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("blob {expected} received more than its {} bytes", expected.size_bytes())]
    TooLong { expected: Digest },
    #[error("blob {expected} ended after {received} bytes")]
    TooShort { expected: Digest, received: u64 },
    #[error("blob claimed to be {expected} hashes to {actual}")]
    HashMismatch { expected: Digest, actual: Digest },
}

impl Verifier {
    pub fn new(expected: Digest) -> Self {
        Self {
            expected,
            hasher: expected.function().hasher(),
            received: 0,
        }
    }

    /// Feeds the next bytes. Refuses, before hashing them, bytes past the
    /// declared size, so an oversized upload fails at its first extra
    /// byte rather than after it was all stored.
    pub fn update(&mut self, data: &[u8]) -> Result<(), VerifyError> {
        let received = self.received.saturating_add(data.len() as u64);
        if received > self.expected.size_bytes() {
            return Err(VerifyError::TooLong {
                expected: self.expected,
            });
        }
        self.hasher.update(data);
        self.received = received;
        Ok(())
    }

    /// How many bytes have been fed.
    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn expected(&self) -> &Digest {
        &self.expected
    }

    /// Checks size and hash of everything fed.
    pub fn finish(self) -> Result<(), VerifyError> {
        if self.received != self.expected.size_bytes() {
            return Err(VerifyError::TooShort {
                expected: self.expected,
                received: self.received,
            });
        }
        let actual = self.hasher.finish_with_size(self.received);
        if actual != self.expected {
            return Err(VerifyError::HashMismatch {
                expected: self.expected,
                actual,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_BLAKE3: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    #[test]
    fn empty_blob_digests_are_the_well_known_ones() {
        assert_eq!(DigestFunction::Sha256.empty().hash_hex(), EMPTY_SHA256);
        assert_eq!(DigestFunction::Blake3.empty().hash_hex(), EMPTY_BLAKE3);
        assert!(DigestFunction::Sha256.empty().is_empty_blob());
    }

    #[test]
    fn digest_of_matches_the_known_sha256_of_abc() {
        let d = DigestFunction::Sha256.digest_of(b"abc");
        assert_eq!(d.size_bytes(), 3);
        assert_eq!(
            d.hash_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn parse_round_trips_through_proto() {
        let d = Digest::parse(DigestFunction::Blake3, EMPTY_BLAKE3, 0).unwrap();
        assert_eq!(
            Digest::from_proto(DigestFunction::Blake3, &d.to_proto()).unwrap(),
            d
        );
    }

    #[test]
    fn parse_refuses_uppercase_short_and_negative() {
        let upper = EMPTY_SHA256.to_uppercase();
        assert!(matches!(
            Digest::parse(DigestFunction::Sha256, &upper, 0),
            Err(DigestError::HashNotLowercaseHex { .. })
        ));
        assert!(matches!(
            Digest::parse(DigestFunction::Sha256, "abc", 0),
            Err(DigestError::HashLength {
                len: 3,
                expected: 64,
                ..
            })
        ));
        assert!(matches!(
            Digest::parse(DigestFunction::Sha256, EMPTY_SHA256, -1),
            Err(DigestError::NegativeSize { size: -1, .. })
        ));
        let non_hex = "g".repeat(64);
        assert!(Digest::parse(DigestFunction::Sha256, &non_hex, 0).is_err());
    }

    #[test]
    fn unset_function_means_sha256_and_sha1_is_refused() {
        assert_eq!(
            DigestFunction::from_proto(0).unwrap(),
            DigestFunction::Sha256
        );
        assert_eq!(
            DigestFunction::from_proto(9).unwrap(),
            DigestFunction::Blake3
        );
        assert!(matches!(
            DigestFunction::from_proto(2),
            Err(DigestError::UnsupportedFunction { value: 2 })
        ));
    }

    #[test]
    fn verifier_accepts_the_right_blob_in_pieces() {
        for function in DigestFunction::ALL {
            let data = b"hello, corral";
            let digest = function.digest_of(data);
            let mut v = Verifier::new(digest);
            v.update(&data[..5]).unwrap();
            v.update(&data[5..]).unwrap();
            v.finish().unwrap();
        }
    }

    #[test]
    fn verifier_refuses_wrong_size_and_wrong_hash() {
        let data = b"hello";
        let digest = DigestFunction::Sha256.digest_of(data);

        let mut long = Verifier::new(digest);
        assert!(matches!(
            long.update(b"hello!"),
            Err(VerifyError::TooLong { .. })
        ));

        let mut short = Verifier::new(digest);
        short.update(b"hell").unwrap();
        assert!(matches!(
            short.finish(),
            Err(VerifyError::TooShort { received: 4, .. })
        ));

        let mut wrong = Verifier::new(digest);
        wrong.update(b"jello").unwrap();
        assert!(matches!(
            wrong.finish(),
            Err(VerifyError::HashMismatch { .. })
        ));
    }
}
