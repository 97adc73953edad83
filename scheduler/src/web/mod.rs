//! The web UI, on the HTTP port next to `/metrics` (served by the
//! scheduler and by `corral up`): server-rendered HTML, readable without
//! JavaScript, with links to paste from a build log.
//!
//! Pages, one file each:
//! - [`home`] — `/`: queues, workers, recent operations.
//! - [`operation`] — `/operation/<name>`: one operation, its result.
//! - [`action`] — `/action/<instance>/<hash>-<size>`: the Action, its
//!   Command, input root and cached result; `/tree/…` one directory.
//! - [`blob`] — `/blob/<instance>/<hash>-<size>`: a file, downloaded.
//! - [`html`] — the layout, links and formats every page shares.
//!
//! What a page shows comes from the same calls as BuildQueueState's (the
//! service, called in process with the caller's identity) and from
//! storage through the scheduler's [`StorageClient`].
//!
//! Who may see what: without `[auth]` everyone sees everything, as over
//! gRPC. With `[auth]` the caller is the subject of the client
//! certificate it presented on the HTTPS port (`[metrics.tls]` with
//! `client_ca`); without one every page is 403. The grants then decide
//! as over gRPC: queues and operations of the instance names the caller
//! holds `operations-all` or `admin` on, blobs of those it holds
//! `cas-read` on, cached results of those it holds `ac-read` on.

mod action;
mod blob;
mod home;
mod html;
mod operation;

use std::sync::{Arc, Mutex, PoisonError};

use corral_auth::{Authorizer, Caller, Permission};
use corral_metrics::axum::http::{Extensions, StatusCode};
use corral_metrics::axum::response::{Html, IntoResponse, Response};
use corral_metrics::axum::routing::get;
use corral_metrics::axum::Router;
use corral_metrics::PeerCertificate;
use corral_proto::reapi::Digest;

use crate::build_queue_state_service::BuildQueueStateService;
use crate::operation::Operations;
use crate::storage_client::StorageClient;

/// Largest blob a page reads from storage to show (stdout, stderr, the
/// sandbox's report) or to list (a Directory); past it the page links
/// the download instead.
pub const SHOW_MAX_BYTES: i64 = 256 << 10;

/// What the pages read.
pub struct Web {
    pub(crate) queue_state: BuildQueueStateService,
    /// For what BuildQueueState does not carry: when a worker was given
    /// its current operation.
    pub(crate) operations: Arc<Mutex<Operations>>,
    pub(crate) storage: StorageClient,
    pub(crate) authorizer: Authorizer,
}

/// The UI's routes, to merge into the HTTP port's router.
pub fn routes(web: Web) -> Router {
    Router::new()
        .route("/", get(home::page))
        .route("/operation/{*name}", get(operation::page))
        .route("/action/{*path}", get(action::page))
        .route("/tree/{*path}", get(action::tree))
        .route("/blob/{*path}", get(blob::download))
        .with_state(Arc::new(web))
}

/// A page that could not be shown: the status and why, shown as a page.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    why: String,
}

impl Refusal {
    fn new(status: StatusCode, why: impl Into<String>) -> Self {
        Self {
            status,
            why: why.into(),
        }
    }

    fn not_found(why: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, why)
    }

    fn forbidden(why: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, why)
    }

    /// From a storage or service error.
    fn of(status: &tonic::Status) -> Self {
        let code = match status.code() {
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => StatusCode::FORBIDDEN,
            tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        };
        Self::new(code, format!("{:?}: {}", status.code(), status.message()))
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = html::layout("Not shown", maud::html! { p.refusal { (self.why) } });
        (self.status, body).into_response()
    }
}

type Page = Result<Html<String>, Refusal>;

impl Web {
    /// Who is asking: anonymous without `[auth]`; with it, the subject
    /// of the client certificate presented, else refused.
    fn caller(&self, extensions: &Extensions) -> Result<Caller, Refusal> {
        if self.authorizer.is_open() {
            return Ok(Caller::anonymous());
        }
        let Some(PeerCertificate(der)) = extensions.get::<PeerCertificate>() else {
            return Err(Refusal::forbidden(
                "with [auth] configured, the web UI is shown only to callers with a client \
                 certificate (HTTPS port with [metrics.tls] client_ca)",
            ));
        };
        let identity = corral_auth::certificate::identity(der)
            .map_err(|_| Refusal::forbidden("the client certificate cannot be read"))?;
        Ok(Caller::from_certificate(identity))
    }

    /// Ok if `caller` holds `permission` on `instance`.
    fn check(
        &self,
        caller: &Caller,
        permission: Permission,
        instance: &str,
    ) -> Result<(), Refusal> {
        self.authorizer
            .check(caller, permission, instance)
            .map_err(|status| Refusal::of(&status))
    }

    /// A service request carrying `caller`, as the authentication layer
    /// would have left it.
    fn request<T>(caller: &Caller, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.extensions_mut().insert(caller.clone());
        request
    }

    /// When the operation `name` was last handed to a worker.
    fn handed_out(&self, name: &str) -> Option<std::time::SystemTime> {
        self.operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)?
            .handed_out()
    }

    /// Reads one blob of `instance` whole, refusing one past `max_bytes`.
    async fn read(
        &self,
        instance: &str,
        digest: &Digest,
        max_bytes: i64,
    ) -> Result<Vec<u8>, Refusal> {
        if digest.size_bytes > max_bytes {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{}-{} is larger than the {max_bytes} bytes this page reads",
                    digest.hash, digest.size_bytes
                ),
            ));
        }
        if digest.size_bytes == 0 {
            return Ok(Vec::new());
        }
        let fetched = self
            .storage
            .fetch(instance, 0, std::slice::from_ref(digest))
            .await
            .map_err(|status| Refusal::of(&status))?;
        fetched
            .found
            .into_iter()
            .next()
            .map(|(_, data)| data)
            .ok_or_else(|| {
                Refusal::not_found(format!(
                    "storage has no blob {}-{} for instance name {instance:?}",
                    digest.hash, digest.size_bytes
                ))
            })
    }
}

/// Splits `<instance>/<hash>-<size>` (the instance name may be empty, or
/// hold slashes) into the instance name and the digest.
fn instance_and_digest(path: &str) -> Result<(String, Digest), Refusal> {
    let (instance, digest) = match path.rsplit_once('/') {
        Some((instance, digest)) => (instance, digest),
        None => ("", path),
    };
    let bad = || {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("not <instance>/<hash>-<size>: {path:?}"),
        )
    };
    let (hash, size) = digest.split_once('-').ok_or_else(bad)?;
    let size_bytes: i64 = size.parse().map_err(|_| bad())?;
    if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || size_bytes < 0 {
        return Err(bad());
    }
    Ok((
        instance.to_owned(),
        Digest {
            hash: hash.to_ascii_lowercase(),
            size_bytes,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_an_instance_and_a_digest() {
        let (instance, digest) = instance_and_digest("team/a/ab12-7").unwrap();
        assert_eq!(instance, "team/a");
        assert_eq!((digest.hash.as_str(), digest.size_bytes), ("ab12", 7));
        let (instance, _) = instance_and_digest("ab12-7").unwrap();
        assert_eq!(instance, "");
        for bad in ["ab12", "zz-1", "ab-x", "ab--1", "team/-1"] {
            assert!(instance_and_digest(bad).is_err(), "{bad}");
        }
    }
}
