//! `/blob/<instance>/<hash>-<size>`: one blob from storage, as a
//! download of any size. The blob streams from storage to the browser a
//! chunk at a time (nothing large is held), and is checked against its
//! digest as it passes: one found corrupt at its end aborts the download,
//! so the browser reports a failed download rather than saving bad bytes.

use std::sync::Arc;

use corral_auth::Permission;
use corral_metrics::axum::body::Body;
use corral_metrics::axum::extract::{Path, State};
use corral_metrics::axum::http::{header, Extensions};
use corral_metrics::axum::response::{IntoResponse, Response};

use super::html::digest_text;
use super::{instance_and_digest, Refusal, Web};

pub async fn download(
    State(web): State<Arc<Web>>,
    Path(path): Path<String>,
    extensions: Extensions,
) -> Result<Response, Refusal> {
    let caller = web.caller(&extensions)?;
    let (instance, digest) = instance_and_digest(&path)?;
    web.check(&caller, Permission::CasRead, &instance)?;
    let body = if digest.size_bytes == 0 {
        Body::empty()
    } else {
        let chunks = web
            .storage
            .read_chunks(&instance, 0, &digest)
            .await
            .map_err(|status| Refusal::of(&status))?;
        Body::from_stream(chunks)
    };
    let disposition = format!("attachment; filename=\"{}\"", digest_text(&digest));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
            // Known before the first byte: the browser shows progress, and
            // a download cut short by a corrupt end is seen as incomplete.
            (header::CONTENT_LENGTH, digest.size_bytes.to_string()),
        ],
        body,
    )
        .into_response())
}
