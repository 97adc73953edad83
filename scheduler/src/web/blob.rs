//! `/blob/<instance>/<hash>-<size>`: one blob from storage, as a
//! download. Read whole through the scheduler's storage client, so only
//! blobs that fit one batch read (storage's `max_batch_total_size_bytes`)
//! download here; larger ones are refused, naming their size.

use std::sync::Arc;

use corral_auth::Permission;
use corral_metrics::axum::extract::{Path, State};
use corral_metrics::axum::http::{header, Extensions};
use corral_metrics::axum::response::{IntoResponse, Response};

use super::html::digest_text;
use super::{instance_and_digest, Refusal, Web};

/// The largest blob served: what one batch read carries at most.
const DOWNLOAD_MAX_BYTES: i64 = 4 << 20;

pub async fn download(
    State(web): State<Arc<Web>>,
    Path(path): Path<String>,
    extensions: Extensions,
) -> Result<Response, Refusal> {
    let caller = web.caller(&extensions)?;
    let (instance, digest) = instance_and_digest(&path)?;
    web.check(&caller, Permission::CasRead, &instance)?;
    let data = web.read(&instance, &digest, DOWNLOAD_MAX_BYTES).await?;
    let disposition = format!("attachment; filename=\"{}\"", digest_text(&digest));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        data,
    )
        .into_response())
}
