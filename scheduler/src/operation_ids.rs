//! The `OperationIds` trait: where operation names come from, injected
//! so tests can predict them.

/// Makes the names of new operations, `operations/<id>`, each unique for
/// the life of the scheduler.
pub trait OperationIds: Send + Sync {
    fn next_name(&self) -> Result<String, OperationIdError>;
}

/// Why no name could be made.
#[derive(Debug, thiserror::Error)]
pub enum OperationIdError {
    #[error("failed to make an operation name")]
    Randomness(#[source] corral_proto::ids::RandomnessError),
}
