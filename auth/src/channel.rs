//! Client channels to other daemons, all built one way: TLS when
//! `[client_tls]` is configured, and its bearer token on every call.
//!
//! An endpoint's scheme must agree with the configuration: `https://`
//! without `[client_tls]` would have nothing to verify the server with,
//! and `http://` with it would send the token in the clear while the
//! operator believes the daemon speaks TLS. Both are start-up errors
//! naming the config key of the endpoint.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Endpoint;
use tonic::{Request, Status};

use crate::tls::{self, ClientTls, ClientTlsMaterial};

/// A channel to another daemon: tonic's, with the bearer token (if any)
/// added to every request. Generated clients take it as their `T`.
pub type Channel = InterceptedService<tonic::transport::Channel, BearerToken>;

/// Adds `authorization: Bearer <token>` to each request, or nothing.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        let state = if self.0.is_some() { "set" } else { "none" };
        write!(f, "BearerToken({state})")
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// What is wrong with an endpoint or the client TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{key}: {endpoint} needs [client_tls]")]
    HttpsWithoutTls { key: String, endpoint: String },
    #[error("{key}: {endpoint} is plaintext but [client_tls] is configured: use https://")]
    PlaintextWithTls { key: String, endpoint: String },
    #[error("{key}: {endpoint:?} is not an http:// or https:// endpoint")]
    Scheme { key: String, endpoint: String },
    #[error("{key}: invalid endpoint {endpoint}")]
    Endpoint {
        key: String,
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("failed to load [client_tls]")]
    Tls(#[from] tls::Error),
}

/// Checks that `endpoint`, named by config key `key`, agrees with whether
/// `[client_tls]` is configured. Reads no file: for config validation.
pub fn check_endpoint(key: &str, endpoint: &str, client_tls: bool) -> Result<(), Error> {
    let error = |make: fn(String, String) -> Error| Err(make(key.to_owned(), endpoint.to_owned()));
    match (endpoint.split_once("://").map(|(s, _)| s), client_tls) {
        (Some("https"), true) | (Some("http"), false) => Ok(()),
        (Some("https"), false) => error(|key, endpoint| Error::HttpsWithoutTls { key, endpoint }),
        (Some("http"), true) => error(|key, endpoint| Error::PlaintextWithTls { key, endpoint }),
        _ => error(|key, endpoint| Error::Scheme { key, endpoint }),
    }
}

/// Makes a daemon's channels to other daemons, from its `[client_tls]`
/// read once at start-up.
#[derive(Debug, Clone, Default)]
pub struct Connector {
    tls: Option<ClientTlsMaterial>,
}

impl Connector {
    /// Plaintext channels, no token: `http://` endpoints only.
    pub fn plaintext() -> Connector {
        Connector::default()
    }

    /// Channels as `[client_tls]` says (plaintext when `None`); reads and
    /// checks its files now.
    pub fn new(client_tls: Option<&ClientTls>) -> Result<Connector, Error> {
        Ok(Connector {
            tls: client_tls.map(ClientTls::load).transpose()?,
        })
    }

    /// Channels with material already loaded.
    pub fn with_material(tls: ClientTlsMaterial) -> Connector {
        Connector { tls: Some(tls) }
    }

    /// Whether channels use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// An endpoint for `url` (config key `key`), TLS set up, for a caller
    /// to tune further before [`wrap`](Self::wrap)ping its channel.
    pub fn endpoint(&self, key: &str, url: &str) -> Result<Endpoint, Error> {
        check_endpoint(key, url, self.tls.is_some())?;
        let invalid = |source| Error::Endpoint {
            key: key.to_owned(),
            endpoint: url.to_owned(),
            source,
        };
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(invalid)?;
        match &self.tls {
            Some(tls) => endpoint.tls_config(tls.tonic.clone()).map_err(invalid),
            None => Ok(endpoint),
        }
    }

    /// `channel` with the token added to every request.
    pub fn wrap(&self, channel: tonic::transport::Channel) -> Channel {
        let token = self.tls.as_ref().and_then(|tls| tls.token.clone());
        InterceptedService::new(channel, BearerToken(token))
    }

    /// A channel to `url` (config key `key`) that connects on first use
    /// and reconnects as needed.
    pub fn connect_lazy(&self, key: &str, url: &str) -> Result<Channel, Error> {
        Ok(self.wrap(self.endpoint(key, url)?.connect_lazy()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_must_agree_with_client_tls() {
        check_endpoint("storage", "http://a:1", false).unwrap();
        check_endpoint("storage", "https://a:1", true).unwrap();
        let text = check_endpoint("storage", "https://a:1", false)
            .unwrap_err()
            .to_string();
        assert_eq!(text, "storage: https://a:1 needs [client_tls]");
        let text = check_endpoint("backend.endpoint", "http://a:1", true)
            .unwrap_err()
            .to_string();
        assert!(
            text.starts_with("backend.endpoint: http://a:1 is plaintext"),
            "{text}"
        );
        let text = check_endpoint("scheduler", "a:1", false)
            .unwrap_err()
            .to_string();
        assert!(text.starts_with("scheduler: "), "{text}");
    }

    #[test]
    fn the_token_goes_on_every_request_and_never_into_debug() {
        let value: MetadataValue<Ascii> = "Bearer secret".parse().unwrap();
        let mut token = BearerToken(Some(value));
        let request = token.call(Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer secret"
        );
        assert!(!format!("{token:?}").contains("secret"));
        let request = BearerToken::default().call(Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
    }

    #[tokio::test]
    async fn a_connector_refuses_endpoints_against_its_configuration() {
        let plain = Connector::plaintext();
        assert!(plain.connect_lazy("storage", "http://127.0.0.1:1").is_ok());
        assert!(matches!(
            plain.connect_lazy("storage", "https://127.0.0.1:1"),
            Err(Error::HttpsWithoutTls { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let files = crate::certs::TestPki::new().write(dir.path()).unwrap();
        let tls = Connector::new(Some(&ClientTls {
            ca: files.ca,
            certificate: None,
            private_key: None,
            token_file: None,
        }))
        .unwrap();
        assert!(tls.connect_lazy("storage", "https://127.0.0.1:1").is_ok());
        assert!(matches!(
            tls.connect_lazy("storage", "http://127.0.0.1:1"),
            Err(Error::PlaintextWithTls { .. })
        ));
    }
}
