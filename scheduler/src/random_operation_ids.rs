//! [`OperationIds`] for production: `operations/` and a random UUID from
//! the one generator, `corral_proto::ids`.
//!
//! A name is all a client needs to watch or cancel an operation, so it
//! must not be guessable from another: 122 random bits per name, one
//! draw each, and nothing derived from a seed, a counter or the clock.
//! Unique across restarts too, so that a client holding an old name gets
//! NOT_FOUND rather than somebody else's operation.

use crate::operation_ids::{OperationIdError, OperationIds};

/// Names `operations/xxxxxxxx-xxxx-4xxx-Vxxx-xxxxxxxxxxxx` (RFC 9562
/// version 4, V one of 8, 9, a, b).
#[derive(Debug, Default)]
pub struct RandomOperationIds;

impl RandomOperationIds {
    pub fn new() -> Self {
        RandomOperationIds
    }
}

impl OperationIds for RandomOperationIds {
    fn next_name(&self) -> Result<String, OperationIdError> {
        let id = corral_proto::ids::uuid_v4().map_err(OperationIdError::Randomness)?;
        Ok(format!("operations/{id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_operations_and_a_uuid_v4() {
        // The UUIDs' randomness is tested where they are made.
        let ids = RandomOperationIds::new();
        let (a, b) = (ids.next_name().unwrap(), ids.next_name().unwrap());
        for name in [&a, &b] {
            let id = name.strip_prefix("operations/").unwrap();
            assert_eq!(id.len(), 36, "{id}");
            assert_eq!(&id[14..15], "4", "version nibble: {id}");
        }
        assert_ne!(a, b);
    }
}
