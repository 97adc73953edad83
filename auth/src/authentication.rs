//! Authentication of every call on a listener: a tower layer in front of
//! the gRPC routes that establishes the [`Caller`] from a verified client
//! certificate or a bearer token, puts it into the request's extensions,
//! and answers UNAUTHENTICATED, saying what was wrong, when the
//! credentials are bad or missing and anonymous calls are not allowed.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready};
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use crate::caller::Caller;
use crate::certificate;
use crate::token::TokenVerifier;
use crate::verified::Verified;

/// What a listener accepts as proof of identity.
#[derive(Debug)]
pub struct Authenticator {
    /// Verifies bearer tokens; `None`: a token is refused.
    pub tokens: Option<TokenVerifier>,
    /// Whether a client certificate (verified by TLS against the
    /// listener's client CA) identifies the caller.
    pub certificates: bool,
    /// Whether a call with no credential proceeds, as `anonymous`.
    pub allow_anonymous: bool,
    /// Whether credentials are not even looked at: a daemon without
    /// `[auth]`, where every caller is anonymous. A worker configured with
    /// a token for a farm that does not check tokens keeps working.
    pub ignore_credentials: bool,
    /// Identities of client certificates already read, by their DER: TLS
    /// verified each at its handshake; reading it is the same every call.
    pub certificates_read: Verified<Vec<u8>, Caller>,
}

/// Certificates remembered at most.
const CERTIFICATES_READ: usize = 4096;

impl Authenticator {
    /// Everybody is anonymous and welcome: a daemon without `[auth]`.
    pub fn anonymous() -> Self {
        Authenticator {
            tokens: None,
            certificates: false,
            allow_anonymous: true,
            ignore_credentials: true,
            certificates_read: Verified::new(CERTIFICATES_READ),
        }
    }

    /// A listener that checks credentials: tokens with `tokens` (refused
    /// without), client certificates if `certificates`, and no credential
    /// at all if `allow_anonymous`.
    pub fn new(tokens: Option<TokenVerifier>, certificates: bool, allow_anonymous: bool) -> Self {
        Authenticator {
            tokens,
            certificates,
            allow_anonymous,
            ignore_credentials: false,
            certificates_read: Verified::new(CERTIFICATES_READ),
        }
    }

    /// The caller of a request with these headers and connection, or
    /// UNAUTHENTICATED. A bearer token wins over a certificate: it names
    /// the user or job, the certificate often only the machine.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Caller, Status> {
        if self.ignore_credentials {
            return Ok(Caller::anonymous());
        }
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim)
                .ok_or_else(|| {
                    Status::unauthenticated("the authorization metadata is not \"Bearer <token>\"")
                })?;
            let Some(verifier) = &self.tokens else {
                return Err(Status::unauthenticated(
                    "this endpoint does not accept bearer tokens",
                ));
            };
            return verifier
                .verify(token)
                .map(Caller::from_token)
                .map_err(|e| Status::unauthenticated(e.to_string()));
        }
        if self.certificates {
            let chain = extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.peer_certs());
            if let Some(leaf) = chain.as_ref().and_then(|chain| chain.first()) {
                if let Some(caller) = self.certificates_read.get(leaf.as_ref()) {
                    return Ok(caller);
                }
                let caller = certificate::identity(leaf)
                    .map(Caller::from_certificate)
                    .map_err(|e| Status::unauthenticated(e.to_string()))?;
                self.certificates_read
                    .insert(leaf.as_ref().to_vec(), caller.clone());
                return Ok(caller);
            }
        }
        if self.allow_anonymous {
            return Ok(Caller::anonymous());
        }
        Err(Status::unauthenticated(self.what_is_missing()))
    }

    fn what_is_missing(&self) -> &'static str {
        match (self.tokens.is_some(), self.certificates) {
            (true, true) => "no credentials: present a client certificate or a bearer token",
            (true, false) => "no credentials: present a bearer token (authorization: Bearer …)",
            (false, true) => "no credentials: present a client certificate",
            (false, false) => "this endpoint accepts no credentials and no anonymous calls",
        }
    }
}

/// The tower layer for a tonic server: `Server::builder().layer(..)`.
#[derive(Debug, Clone)]
pub struct AuthenticationLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthenticationLayer {
    pub fn new(authenticator: Authenticator) -> Self {
        AuthenticationLayer {
            authenticator: Arc::new(authenticator),
        }
    }
}

impl<S> tower::Layer<S> for AuthenticationLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            authenticator: Arc::clone(&self.authenticator),
        }
    }
}

/// A service whose every request carries its [`Caller`].
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Authenticated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self
            .authenticator
            .authenticate(request.headers(), request.extensions())
        {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Either::Left(self.inner.call(request))
            }
            Err(status) => {
                tracing::debug!(path = %request.uri().path(), reason = status.message(), "call refused: unauthenticated");
                Either::Right(futures_util::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_credentials_the_refusal_says_what_to_present() {
        let closed = Authenticator::new(None, true, false);
        let err = closed
            .authenticate(&http::HeaderMap::new(), &http::Extensions::new())
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            err.message(),
            "no credentials: present a client certificate"
        );
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        let err = closed
            .authenticate(&headers, &http::Extensions::new())
            .unwrap_err();
        assert_eq!(err.message(), "this endpoint does not accept bearer tokens");
        headers.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        let err = closed
            .authenticate(&headers, &http::Extensions::new())
            .unwrap_err();
        assert!(err.message().contains("not \"Bearer <token>\""));
        // Without [auth], a token is not refused: nobody checks it.
        let open = Authenticator::anonymous();
        let caller = open
            .authenticate(&headers, &http::Extensions::new())
            .unwrap();
        assert!(caller.is_anonymous());
    }
}
