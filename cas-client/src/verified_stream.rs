//! A blob's chunks passed on as they arrive and checked as a whole at the
//! end: what a reader that cannot hold the blob (an HTTP download, a
//! proxy) needs. The bytes already passed on cannot be taken back, so a
//! blob found wrong ends its stream with DATA_LOSS instead of its last
//! chunk, and the reader must drop what it got.

use futures_util::{Stream, StreamExt as _};

use crate::digest::{Digest, Verifier};

/// `chunks` of the blob `expected`, each passed on once it is known not
/// to run past the blob's size; DATA_LOSS at the end (after the last good
/// chunk) if the whole is shorter or hashes to something else.
pub fn verify_chunks<S>(
    expected: Digest,
    chunks: S,
) -> impl Stream<Item = Result<Vec<u8>, tonic::Status>> + Send + 'static
where
    S: Stream<Item = Result<Vec<u8>, tonic::Status>> + Send + 'static,
{
    let chunks = Box::pin(chunks);
    futures_util::stream::unfold(
        Some((chunks, Verifier::new(expected))),
        |state| async move {
            let (mut chunks, mut verifier) = state?;
            match chunks.next().await {
                Some(Ok(chunk)) => match verifier.update(&chunk) {
                    Ok(()) => Some((Ok(chunk), Some((chunks, verifier)))),
                    Err(wrong) => Some((Err(tonic::Status::data_loss(wrong.to_string())), None)),
                },
                Some(Err(status)) => Some((Err(status), None)),
                None => match verifier.finish() {
                    Ok(()) => None,
                    Err(wrong) => Some((Err(tonic::Status::data_loss(wrong.to_string())), None)),
                },
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    async fn collect(
        expected: Digest,
        chunks: Vec<Result<Vec<u8>, tonic::Status>>,
    ) -> Vec<Result<Vec<u8>, tonic::Code>> {
        verify_chunks(expected, futures_util::stream::iter(chunks))
            .map(|item| item.map_err(|status| status.code()))
            .collect()
            .await
    }

    #[tokio::test]
    async fn the_right_blob_passes_through_in_its_chunks() {
        let expected = DigestFunction::Sha256.digest_of(b"hello world");
        let got = collect(
            expected,
            vec![Ok(b"hello ".to_vec()), Ok(b"world".to_vec())],
        )
        .await;
        assert_eq!(got, vec![Ok(b"hello ".to_vec()), Ok(b"world".to_vec())]);
    }

    #[tokio::test]
    async fn other_content_of_the_same_size_ends_with_data_loss() {
        let expected = DigestFunction::Sha256.digest_of(b"hello world");
        let got = collect(expected, vec![Ok(b"hello there".to_vec())]).await;
        assert_eq!(
            got,
            vec![Ok(b"hello there".to_vec()), Err(tonic::Code::DataLoss)]
        );
    }

    #[tokio::test]
    async fn a_short_blob_ends_with_data_loss_and_a_long_one_stops_before_the_excess() {
        let expected = DigestFunction::Sha256.digest_of(b"hello");
        assert_eq!(
            collect(expected, vec![Ok(b"hel".to_vec())]).await,
            vec![Ok(b"hel".to_vec()), Err(tonic::Code::DataLoss)]
        );
        assert_eq!(
            collect(expected, vec![Ok(b"hel".to_vec()), Ok(b"lo!".to_vec())]).await,
            vec![Ok(b"hel".to_vec()), Err(tonic::Code::DataLoss)]
        );
    }

    #[tokio::test]
    async fn a_failed_read_ends_the_stream_with_its_status() {
        let expected = DigestFunction::Sha256.digest_of(b"hello");
        assert_eq!(
            collect(
                expected,
                vec![
                    Err(tonic::Status::unavailable("gone")),
                    Ok(b"hello".to_vec())
                ]
            )
            .await,
            vec![Err(tonic::Code::Unavailable)]
        );
    }
}
