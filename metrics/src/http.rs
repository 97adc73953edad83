//! The daemons' HTTP port: `/metrics` (the Prometheus page), `/healthz`
//! (the process answers) and `/readyz` (the daemon's dependencies
//! answer), plus whatever a daemon merges into the [`axum::Router`]
//! (the scheduler's web UI). axum's router on hyper's HTTP/1 server,
//! both already linked by tonic; TLS by tokio-rustls with the daemon's
//! config, which may ask for client certificates: the one a caller
//! presented reaches handlers as a [`PeerCertificate`] extension.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

/// How long one readiness check may take before it counts as failed: an
/// orchestrator's probe times out after a few seconds too.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a connection is kept, so a stalled client holds only its
/// own connection and for a bounded time; a browser opens another.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The content type of the Prometheus text format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Where the port is served: a bound socket, and TLS when configured.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Listener {
    /// Plain HTTP on `tcp`.
    pub fn plaintext(tcp: TcpListener) -> Listener {
        Listener { tcp, tls: None }
    }

    /// HTTPS on `tcp` with `config` (which may ask for client
    /// certificates).
    pub fn tls(tcp: TcpListener, config: Arc<tokio_rustls::rustls::ServerConfig>) -> Listener {
        Listener {
            tcp,
            tls: Some(tokio_rustls::TlsAcceptor::from(config)),
        }
    }
}

/// The DER of the certificate a caller presented in the TLS handshake
/// (its first, the caller's own), put in each request's extensions.
/// rustls has checked it against the config's client roots already.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Vec<u8>);

/// One readiness check: `Ok` when what it checks answers, else why not.
pub type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// A [`Check`] from an async function.
pub fn check<F, Fut>(f: F) -> Check
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// The routes every daemon serves: `/metrics` renders `page()` when
/// scraped (the bytes as they are), `/healthz` answers `ok` while the
/// process serves, `/readyz` runs `checks` (named, in order) and answers
/// 200 if all pass, else 503; both list each check and its outcome.
pub fn router(
    page: impl Fn() -> String + Clone + Send + Sync + 'static,
    checks: Vec<(&'static str, Check)>,
) -> Router {
    router_async(
        move || {
            let body = page();
            async move { body }
        },
        checks,
    )
}

/// Like [`router`], for a page that must await something when scraped
/// (`corral up` reads its runner child's page).
pub fn router_async<F, Fut>(page: F, checks: Vec<(&'static str, Check)>) -> Router
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let checks = Arc::new(checks);
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = page();
                async move { ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body.await) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || ready(Arc::clone(&checks))))
}

/// Runs `checks`, each within [`CHECK_TIMEOUT`].
async fn ready(checks: Arc<Vec<(&'static str, Check)>>) -> impl IntoResponse {
    let mut body = String::new();
    let mut all = true;
    for (name, check) in checks.iter() {
        let outcome = tokio::time::timeout(CHECK_TIMEOUT, check())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")));
        match outcome {
            Ok(()) => {
                let _ = writeln!(body, "{name}: ok");
            }
            Err(why) => {
                all = false;
                // One line per check, whatever the error says.
                let _ = writeln!(body, "{name}: {}", why.replace('\n', " "));
            }
        }
    }
    let status = if all {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// Serves `app` on `listener` until `shutdown`.
pub async fn serve(listener: Listener, app: Router, shutdown: impl Future<Output = ()>) {
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.tcp.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let app = app.clone();
                let tls = listener.tls.clone();
                connections.spawn(async move {
                    let _ = tokio::time::timeout(
                        CONNECTION_TIMEOUT,
                        connection(stream, tls, app),
                    )
                    .await;
                });
                // Finished ones are reaped as others arrive.
                while connections.try_join_next().is_some() {}
            }
        }
    }
}

/// Answers one connection: the TLS handshake when `tls` is set, then its
/// requests.
async fn connection(stream: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>, app: Router) {
    // Pages are small and answered at once: no reason to wait for more.
    let _ = stream.set_nodelay(true);
    match tls {
        None => http1(stream, app, None).await,
        Some(tls) => {
            let Ok(stream) = tls.accept(stream).await else {
                return;
            };
            let peer = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|der| PeerCertificate(der.to_vec()));
            http1(stream, app, peer).await;
        }
    }
}

async fn http1(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    app: Router,
    peer: Option<PeerCertificate>,
) {
    let service = hyper::service::service_fn(move |mut request: Request<_>| {
        if let Some(peer) = &peer {
            request.extensions_mut().insert(peer.clone());
        }
        app.clone().oneshot(request)
    });
    // One request per connection, as scrapers and probes expect (they
    // read to the end): pages are small, and no idle connection is kept.
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Runs `work`, serving `app` on `listener` (when there is one) until
/// `work` ends: for a daemon whose port lives exactly as long as it.
pub async fn serving_while<T>(
    listener: Option<Listener>,
    app: Router,
    work: impl Future<Output = T>,
) -> T {
    let Some(listener) = listener else {
        return work.await;
    };
    // The port never stops by itself: it stops when `work` has, and this
    // select drops it.
    tokio::pin!(work);
    tokio::select! {
        done = &mut work => done,
        () = serve(listener, app, std::future::pending()) => work.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// GETs `path` over a fresh connection; the status code and body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // No `connection: close`: the server closes after one answer.
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    /// Serves `app` on a fresh port while the returned set lives.
    async fn serving(app: Router) -> (std::net::SocketAddr, tokio::task::JoinSet<()>) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut server = tokio::task::JoinSet::new();
        server.spawn(serve(Listener::plaintext(tcp), app, std::future::pending()));
        (addr, server)
    }

    const PAGE: &str = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"<&>\"} 1\n";

    #[tokio::test]
    async fn the_metrics_page_is_served_as_rendered() {
        let (addr, _server) = serving(router(|| PAGE.to_owned(), vec![])).await;
        assert_eq!(get(addr, "/metrics").await, (200, PAGE.to_owned()));
        assert_eq!(get(addr, "/other").await.0, 404);
    }

    #[tokio::test]
    async fn healthz_answers_while_the_process_serves() {
        let failing = check(|| async { Err("storage down".to_owned()) });
        let (addr, _server) = serving(router(String::new, vec![("storage", failing)])).await;
        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_owned()));
    }

    #[tokio::test]
    async fn readyz_is_ok_when_every_check_passes() {
        let passing = check(|| async { Ok(()) });
        let (addr, _server) = serving(router(String::new, vec![("storage", passing)])).await;
        assert_eq!(
            get(addr, "/readyz").await,
            (200, "storage: ok\n".to_owned())
        );
    }

    #[tokio::test]
    async fn readyz_is_unavailable_when_a_check_fails_and_says_which() {
        let passing = check(|| async { Ok(()) });
        let failing = check(|| async { Err("connection refused\nby peer".to_owned()) });
        let (addr, _server) = serving(router(
            String::new,
            vec![("runner", passing), ("scheduler", failing)],
        ))
        .await;
        assert_eq!(
            get(addr, "/readyz").await,
            (
                503,
                "runner: ok\nscheduler: connection refused by peer\n".to_owned()
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn readyz_fails_a_check_that_does_not_answer() {
        let hanging = check(std::future::pending);
        let (status, body) = ready(Arc::new(vec![("storage", hanging)]))
            .await
            .into_response()
            .into_parts();
        assert_eq!(status.status, StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(body, 1 << 10).await.unwrap();
        assert_eq!(body, "storage: no answer within 5s\n");
    }
}
