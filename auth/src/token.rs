//! Bearer tokens: JWTs in the `authorization` metadata, as Bazel sends them
//! with `--remote_header=Authorization=Bearer …` or a credential helper.
//!
//! A token is accepted only when a configured key verifies its signature
//! with that key's own algorithm (so a token cannot pick a weaker one: an
//! RSA public key is never used as an HS256 secret), its `exp` is in the
//! future, its `nbf` (if any) in the past, and its `iss` and `aud` are
//! among the configured ones. Refusals say what was wrong with the token,
//! never which keys exist.

use std::path::{Path, PathBuf};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::caller::TokenIdentity;
use crate::verified::Verified;

/// `[auth.tokens]`: which bearer tokens a listener accepts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A JWKS file (RFC 7517) with the public keys of the identity
    /// provider: RSA (RS256), EC P-256 (ES256) and Ed25519 (EdDSA) keys.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// PEM public keys (`-----BEGIN PUBLIC KEY-----`): RSA keys verify
    /// RS256, P-256 keys ES256, Ed25519 keys EdDSA.
    #[serde(default)]
    pub public_key_files: Vec<PathBuf>,
    /// A file whose content (whitespace trimmed) is an HS256 secret, for
    /// small farms that sign their own tokens (`corral up --secure`).
    /// Anyone who can read it can mint tokens: keep it 0600.
    #[serde(default)]
    pub hs256_secret_file: Option<PathBuf>,
    /// Accepted `iss` values. At least one.
    pub issuers: Vec<String>,
    /// Accepted `aud` values (a token naming any of them is accepted). At
    /// least one.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds. Default 30.
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
}

fn default_leeway_s() -> u64 {
    30
}

/// A key and the one algorithm it verifies.
struct VerifyingKey {
    id: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies bearer tokens against the configured keys.
pub struct TokenVerifier {
    keys: Vec<VerifyingKey>,
    validation: Validation,
    /// Tokens that verified, with their `exp`: checked again for expiry on
    /// every use, never for the signature.
    verified: Verified<String, (TokenIdentity, u64)>,
}

/// Tokens remembered at most; a farm's callers are far fewer.
const VERIFIED_TOKENS: usize = 4096;

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Why the token configuration was refused at start-up.
#[derive(Debug, thiserror::Error)]
pub enum TokenConfigError {
    #[error("failed to read {key} file {path}")]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key} file {path} holds no key this farm can use: {reason}")]
    Key {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("[auth.tokens] names no key: set jwks_file, public_key_files or hs256_secret_file")]
    NoKeys,
    #[error("[auth.tokens] {0} is empty: tokens must be checked for it")]
    Empty(&'static str),
}

/// Why a presented token was refused. The text goes back to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the bearer token is for another audience")]
    WrongAudience,
    #[error("the bearer token's issuer is not trusted here")]
    UnknownIssuer,
    #[error("the bearer token's signature does not verify")]
    BadSignature,
    #[error("the bearer token has no {0} claim")]
    MissingClaim(String),
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
}

impl TokenVerifier {
    /// Loads every key the configuration names.
    pub fn new(cfg: &TokenConfig) -> Result<TokenVerifier, TokenConfigError> {
        if cfg.issuers.is_empty() {
            return Err(TokenConfigError::Empty("issuers"));
        }
        if cfg.audiences.is_empty() {
            return Err(TokenConfigError::Empty("audiences"));
        }
        let mut keys = Vec::new();
        if let Some(path) = &cfg.jwks_file {
            keys.extend(jwks_keys(path)?);
        }
        for path in &cfg.public_key_files {
            keys.push(pem_key(path)?);
        }
        if let Some(path) = &cfg.hs256_secret_file {
            let secret = read("hs256_secret_file", path)?;
            let secret = secret.trim_ascii();
            if secret.len() < 32 {
                return Err(TokenConfigError::Key {
                    key: "hs256_secret_file",
                    path: path.clone(),
                    reason: "an HS256 secret must be at least 32 bytes".to_owned(),
                });
            }
            let key = DecodingKey::from_secret(secret).map_err(|e| TokenConfigError::Key {
                key: "hs256_secret_file",
                path: path.clone(),
                reason: e.to_string(),
            })?;
            keys.push(VerifyingKey {
                id: None,
                algorithm: Algorithm::HS256,
                key,
            });
        }
        if keys.is_empty() {
            return Err(TokenConfigError::NoKeys);
        }
        // The algorithm is set per key at verification; this is a
        // placeholder the loop replaces.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&cfg.issuers);
        validation.set_audience(&cfg.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = cfg.leeway_s;
        Ok(TokenVerifier {
            keys,
            validation,
            verified: Verified::new(VERIFIED_TOKENS),
        })
    }

    /// The identity a token proves, or why it proves none.
    pub fn verify(&self, token: &str) -> Result<TokenIdentity, TokenError> {
        if let Some((identity, exp)) = self.verified.get(token) {
            if unix_now() <= exp.saturating_add(self.validation.leeway) {
                return Ok(identity);
            }
            self.verified.remove(token);
            return Err(TokenError::Expired);
        }
        let identity = self.verify_signature_and_claims(token)?;
        // `exp` is required, so a verified token has one.
        if let Some(exp) = identity
            .claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
        {
            self.verified
                .insert(token.to_owned(), (identity.clone(), exp));
        }
        Ok(identity)
    }

    fn verify_signature_and_claims(&self, token: &str) -> Result<TokenIdentity, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        // Keys with the token's algorithm; the one its `kid` names first.
        let mut candidates: Vec<&VerifyingKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .collect();
        if let Some(kid) = &header.kid {
            candidates.sort_by_key(|k| k.id.as_deref() != Some(kid.as_str()));
        }
        let mut error = TokenError::BadSignature;
        for key in candidates {
            let mut validation = self.validation.clone();
            validation.algorithms = vec![key.algorithm];
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                &key.key,
                &validation,
            ) {
                Ok(data) => return Ok(identity(data.claims)),
                Err(e) => match e.kind() {
                    // Another key may verify it.
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidAlgorithm
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidEddsaKey
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidKeyFormat => {}
                    // The signature verified: the claims are what is wrong.
                    kind => {
                        error = claims_error(kind);
                        break;
                    }
                },
            }
        }
        Err(error)
    }
}

/// Signs `claims` with an HS256 secret: the tokens of a farm that issues
/// its own (`corral up --secure`), and of tests.
pub fn sign_hs256(secret: &[u8], claims: &serde_json::Value) -> Result<String, TokenSignError> {
    let key = jsonwebtoken::EncodingKey::from_secret(secret).map_err(TokenSignError)?;
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), claims, &key)
        .map_err(TokenSignError)
}

/// A token could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("failed to sign a token")]
pub struct TokenSignError(#[source] jsonwebtoken::errors::Error);

/// The clock jsonwebtoken checks `exp` against when it decodes, so a
/// remembered token expires exactly when decoding it again would refuse it
/// (this crate depends on nothing of ours, so not corral_proto::time).
fn unix_now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::UnknownIssuer,
        ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim.clone()),
        _ => TokenError::Malformed,
    }
}

fn identity(claims: serde_json::Map<String, serde_json::Value>) -> TokenIdentity {
    let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    TokenIdentity {
        subject: text("sub"),
        issuer: text("iss").unwrap_or_default(),
        claims,
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TokenConfigError> {
    std::fs::read(path).map_err(|source| TokenConfigError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

/// A PEM public key, its algorithm from its kind.
fn pem_key(path: &Path) -> Result<VerifyingKey, TokenConfigError> {
    let pem = read("public_key_files", path)?;
    let (algorithm, key) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        (Algorithm::RS256, key)
    } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        (Algorithm::ES256, key)
    } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        (Algorithm::EdDSA, key)
    } else {
        return Err(TokenConfigError::Key {
            key: "public_key_files",
            path: path.to_owned(),
            reason: "not an RSA, P-256 or Ed25519 public key in PEM".to_owned(),
        });
    };
    Ok(VerifyingKey {
        id: None,
        algorithm,
        key,
    })
}

/// Every usable key of a JWKS file.
fn jwks_keys(path: &Path) -> Result<Vec<VerifyingKey>, TokenConfigError> {
    let text = read("jwks_file", path)?;
    let bad = |reason: String| TokenConfigError::Key {
        key: "jwks_file",
        path: path.to_owned(),
        reason,
    };
    let set: JwkSet = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            // Symmetric keys do not belong in a published key set, and
            // other curves are not offered.
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?;
        keys.push(VerifyingKey {
            id: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    if keys.is_empty() {
        return Err(bad("no RSA, P-256 or Ed25519 key in the set".to_owned()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        unix_now()
    }

    fn verifier(dir: &Path) -> TokenVerifier {
        let secret = dir.join("secret");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        TokenVerifier::new(&TokenConfig {
            jwks_file: None,
            public_key_files: vec![],
            hs256_secret_file: Some(secret),
            issuers: vec!["corral".to_owned()],
            audiences: vec!["farm".to_owned()],
            leeway_s: 0,
        })
        .unwrap()
    }

    fn sign(claims: serde_json::Value, secret: &str) -> String {
        sign_hs256(secret.as_bytes(), &claims).unwrap()
    }

    #[test]
    fn a_good_token_proves_its_subject_and_each_fault_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(dir.path());
        let t = now();
        let good = serde_json::json!({"sub": "ci", "iss": "corral", "aud": "farm", "exp": t + 60, "groups": ["a"]});
        let id = v.verify(&sign(good.clone(), SECRET)).unwrap();
        assert_eq!(id.subject.as_deref(), Some("ci"));
        assert_eq!(id.claims["groups"], serde_json::json!(["a"]));

        let with = |field: &str, value: serde_json::Value| {
            let mut c = good.clone();
            c[field] = value;
            sign(c, SECRET)
        };
        assert_eq!(
            v.verify(&with("exp", (t - 120).into())),
            Err(TokenError::Expired)
        );
        assert_eq!(
            v.verify(&with("nbf", (t + 120).into())),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            v.verify(&with("aud", "other".into())),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            v.verify(&with("iss", "evil".into())),
            Err(TokenError::UnknownIssuer)
        );
        assert_eq!(
            v.verify(&sign(good.clone(), "another secret of at least 32 bytes!")),
            Err(TokenError::BadSignature)
        );
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            v.verify(&sign(no_exp, SECRET)),
            Err(TokenError::MissingClaim("exp".to_owned()))
        );
        assert_eq!(v.verify("not.a.jwt"), Err(TokenError::Malformed));
        // alg "none" is never accepted.
        let unsigned = format!(
            "{}.{}.",
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
            sign(good, SECRET).split('.').nth(1).unwrap()
        );
        assert!(v.verify(&unsigned).is_err());
    }

    #[test]
    fn a_remembered_token_is_refused_once_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(dir.path());
        let claims =
            serde_json::json!({"sub": "ci", "iss": "corral", "aud": "farm", "exp": now() + 1});
        let token = sign(claims, SECRET);
        assert!(v.verify(&token).is_ok());
        // The second use is answered from what was verified.
        assert!(v.verify(&token).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(v.verify(&token), Err(TokenError::Expired));
        assert_eq!(v.verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn configuration_mistakes_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "too short").unwrap();
        let cfg = |secret: Option<PathBuf>, issuers: Vec<String>| TokenConfig {
            jwks_file: None,
            public_key_files: vec![],
            hs256_secret_file: secret,
            issuers,
            audiences: vec!["farm".to_owned()],
            leeway_s: 30,
        };
        let err = TokenVerifier::new(&cfg(Some(short), vec!["i".to_owned()])).unwrap_err();
        assert!(err.to_string().contains("hs256_secret_file"), "{err}");
        let err = TokenVerifier::new(&cfg(None, vec!["i".to_owned()])).unwrap_err();
        assert!(err.to_string().contains("names no key"), "{err}");
        let err = TokenVerifier::new(&cfg(None, vec![])).unwrap_err();
        assert!(err.to_string().contains("issuers"), "{err}");
        let missing = dir.path().join("missing.pem");
        let mut c = cfg(None, vec!["i".to_owned()]);
        c.public_key_files = vec![missing.clone()];
        let err = TokenVerifier::new(&c).unwrap_err();
        assert!(err.to_string().contains("public_key_files"), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }

    /// Base64url without padding, as JWKS writes key material.
    fn b64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            }
        }
        out
    }

    #[test]
    fn public_keys_verify_their_own_algorithm_from_pem_and_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let now = now();
        let claims = serde_json::json!({"sub": "ci", "iss": "idp", "aud": "farm", "exp": now + 60});
        let sign = |alg: Algorithm, key: jsonwebtoken::EncodingKey, kid: Option<&str>| {
            let mut header = jsonwebtoken::Header::new(alg);
            header.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        };
        let config = |pems: Vec<PathBuf>, jwks: Option<PathBuf>| TokenConfig {
            jwks_file: jwks,
            public_key_files: pems,
            hs256_secret_file: None,
            issuers: vec!["idp".to_owned()],
            audiences: vec!["farm".to_owned()],
            leeway_s: 0,
        };
        // P-256 (ES256) and Ed25519 (EdDSA) keys made here; RSA (RS256)
        // from a test key in tests/keys (ring cannot make RSA keys).
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
        let rsa_private = std::fs::read(keys.join("rsa-test.key")).unwrap();
        let mut pems = Vec::new();
        for (name, pem) in [
            ("p256.pem", p256.public_key_pem()),
            ("ed.pem", ed.public_key_pem()),
            (
                "rsa.pem",
                std::fs::read_to_string(keys.join("rsa-test.pub")).unwrap(),
            ),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
            pems.push(dir.path().join(name));
        }
        let es256 = sign(
            Algorithm::ES256,
            jsonwebtoken::EncodingKey::from_ec_pem(p256.serialize_pem().as_bytes()).unwrap(),
            None,
        );
        let eddsa = sign(
            Algorithm::EdDSA,
            jsonwebtoken::EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
            None,
        );
        let rs256 = sign(
            Algorithm::RS256,
            jsonwebtoken::EncodingKey::from_rsa_pem(&rsa_private).unwrap(),
            None,
        );
        let by_pem = TokenVerifier::new(&config(pems.clone(), None)).unwrap();
        for token in [&es256, &eddsa, &rs256] {
            assert_eq!(by_pem.verify(token).unwrap().subject.as_deref(), Some("ci"));
        }
        // Without the key that signed it, a token does not verify, and
        // the refusal names no key.
        let without_ed = TokenVerifier::new(&config(vec![pems[0].clone()], None)).unwrap();
        assert_eq!(without_ed.verify(&eddsa), Err(TokenError::BadSignature));
        // An RSA public key is never an HS256 secret: a token signed with
        // the public key's PEM text as the secret does not verify.
        let confused = sign(
            Algorithm::HS256,
            jsonwebtoken::EncodingKey::from_secret(
                &std::fs::read(keys.join("rsa-test.pub")).unwrap(),
            )
            .unwrap(),
            None,
        );
        assert_eq!(by_pem.verify(&confused), Err(TokenError::BadSignature));

        // The same keys from a JWKS file, chosen by kid.
        let point = p256.public_key_raw();
        let jwks = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "p", "x": b64url(&point[1..33]), "y": b64url(&point[33..65])},
            {"kty": "OKP", "crv": "Ed25519", "kid": "e", "x": b64url(ed.public_key_raw())},
        ]});
        let jwks_path = dir.path().join("keys.jwks");
        std::fs::write(&jwks_path, jwks.to_string()).unwrap();
        let by_jwks = TokenVerifier::new(&config(vec![], Some(jwks_path))).unwrap();
        let es256_kid = sign(
            Algorithm::ES256,
            jsonwebtoken::EncodingKey::from_ec_pem(p256.serialize_pem().as_bytes()).unwrap(),
            Some("p"),
        );
        assert!(by_jwks.verify(&es256_kid).is_ok());
        assert!(by_jwks.verify(&eddsa).is_ok());
        assert_eq!(by_jwks.verify(&rs256), Err(TokenError::BadSignature));
    }
}
