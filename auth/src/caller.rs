//! Who made a call, as the authentication layer established it: a verified
//! client certificate, a verified bearer token, or nobody (anonymous).
//!
//! The layer puts a [`Caller`] into every request's extensions; services
//! read it back with [`Caller::of`]. A request that never passed the layer
//! (a daemon without `[auth]`, a test calling a service directly) is
//! anonymous.

use std::fmt;

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateIdentity {
    /// The subject as RFC 4514 text, e.g. `CN=worker-1,O=farm`.
    pub subject: String,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// Subject alternative names as text: DNS names, URIs, e-mail
    /// addresses and IP addresses.
    pub alternative_names: Vec<String>,
}

/// The claims of a verified bearer token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenIdentity {
    /// `sub`, if the token has one.
    pub subject: Option<String>,
    /// `iss`.
    pub issuer: String,
    /// Every claim, for grants that match on any of them (`groups`, …).
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// How the caller proved who it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    Anonymous,
    Certificate(CertificateIdentity),
    Token(TokenIdentity),
}

/// The caller of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    name: String,
    credential: Credential,
}

impl Caller {
    pub fn anonymous() -> Self {
        Caller {
            name: "anonymous".to_owned(),
            credential: Credential::Anonymous,
        }
    }

    pub fn from_certificate(certificate: CertificateIdentity) -> Self {
        Caller {
            name: format!("cert:{}", certificate.subject),
            credential: Credential::Certificate(certificate),
        }
    }

    pub fn from_token(token: TokenIdentity) -> Self {
        let name = match &token.subject {
            Some(sub) => format!("token:{sub}"),
            None => format!("token:{}", token.issuer),
        };
        Caller {
            name,
            credential: Credential::Token(token),
        }
    }

    /// The caller of `request`, as the authentication layer left it;
    /// anonymous when no layer ran.
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        Self::from_extensions(request.extensions())
    }

    /// [`Caller::of`] for code that holds only the extensions.
    pub fn from_extensions(extensions: &tonic::Extensions) -> Caller {
        extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::anonymous)
    }

    /// How refusals and logs name the caller, and who owns the operations
    /// it starts: `anonymous`, `cert:<subject>` or `token:<sub>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    pub fn is_anonymous(&self) -> bool {
        matches!(self.credential, Credential::Anonymous)
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_that_passed_no_layer_is_anonymous() {
        let request = tonic::Request::new(());
        assert!(Caller::of(&request).is_anonymous());
        let mut request = tonic::Request::new(());
        let cert = Caller::from_certificate(CertificateIdentity {
            subject: "CN=worker-1".to_owned(),
            common_name: Some("worker-1".to_owned()),
            alternative_names: vec![],
        });
        request.extensions_mut().insert(cert.clone());
        assert_eq!(Caller::of(&request), cert);
        assert_eq!(cert.name(), "cert:CN=worker-1");
    }
}
