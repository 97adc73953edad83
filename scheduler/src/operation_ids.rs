//! The `OperationIds` trait: where operation names come from, injected
//! so tests can predict them.

/// Makes the names of new operations, `operations/<id>`, each unique for
/// the life of the scheduler.
pub trait OperationIds: Send + Sync {
    fn next_name(&self) -> String;
}
