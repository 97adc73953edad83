//! The FAILED_PRECONDITION status REAPI prescribes for missing blobs: a
//! `google.rpc.Status` in the gRPC details, carrying a
//! `PreconditionFailure` with one `MISSING` violation per blob, subject
//! `blobs/{hash}/{size}`. Bazel reads exactly this to re-upload inputs and
//! retry, so the scheduler and the worker build it here, one way.

use prost::Message;

use crate::error_details::{precondition_failure::Violation, PreconditionFailure};
use crate::protobuf::Any;
use crate::reapi::Digest;
use crate::rpc;

/// `Any.type_url` of a PreconditionFailure.
pub const PRECONDITION_FAILURE_TYPE_URL: &str =
    "type.googleapis.com/google.rpc.PreconditionFailure";

/// The violation type REAPI uses for a missing blob.
pub const MISSING: &str = "MISSING";

/// `blobs/{hash}/{size}`, the subject of a missing-blob violation.
pub fn subject(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.hash, digest.size_bytes)
}

/// FAILED_PRECONDITION naming each of `missing` in its details.
pub fn missing_blobs(message: &str, missing: &[Digest]) -> tonic::Status {
    let failure = PreconditionFailure {
        violations: missing
            .iter()
            .map(|d| Violation {
                r#type: MISSING.to_owned(),
                subject: subject(d),
                description: String::new(),
            })
            .collect(),
    };
    let status = rpc::Status {
        code: tonic::Code::FailedPrecondition as i32,
        message: message.to_owned(),
        details: vec![Any {
            type_url: PRECONDITION_FAILURE_TYPE_URL.to_owned(),
            value: failure.encode_to_vec(),
        }],
    };
    tonic::Status::with_details(
        tonic::Code::FailedPrecondition,
        message,
        status.encode_to_vec().into(),
    )
}

/// The missing-blob subjects in a status built by [`missing_blobs`] (or
/// any server's equivalent); empty when there are none.
pub fn missing_subjects(status: &tonic::Status) -> Vec<String> {
    let Ok(details) = rpc::Status::decode(status.details()) else {
        return Vec::new();
    };
    details
        .details
        .iter()
        .filter(|any| any.type_url == PRECONDITION_FAILURE_TYPE_URL)
        .filter_map(|any| PreconditionFailure::decode(any.value.as_slice()).ok())
        .flat_map(|f| f.violations)
        .filter(|v| v.r#type == MISSING)
        .map(|v| v.subject)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_blobs_round_trip_through_the_status_details() {
        let a = Digest {
            hash: "ab".repeat(32),
            size_bytes: 12,
        };
        let b = Digest {
            hash: "cd".repeat(32),
            size_bytes: 0,
        };
        let status = missing_blobs("inputs missing", &[a.clone(), b]);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.message(), "inputs missing");
        assert_eq!(
            missing_subjects(&status),
            [
                format!("blobs/{}/12", a.hash),
                format!("blobs/{}/0", "cd".repeat(32))
            ]
        );
    }

    #[test]
    fn wire_numbers_match_google_rpc() {
        // violations = 1 (LEN); Violation: type = 1, subject = 2, description = 3.
        let v = Violation {
            r#type: "T".into(),
            subject: "S".into(),
            description: "D".into(),
        };
        assert_eq!(
            v.encode_to_vec(),
            [0x0a, 1, b'T', 0x12, 1, b'S', 0x1a, 1, b'D']
        );
        let f = PreconditionFailure {
            violations: vec![Violation::default()],
        };
        assert_eq!(f.encode_to_vec(), [0x0a, 0]);
    }

    #[test]
    fn a_status_without_details_has_no_subjects() {
        assert!(missing_subjects(&tonic::Status::not_found("x")).is_empty());
    }
}
