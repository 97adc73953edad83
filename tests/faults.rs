//! Faults of a whole farm: a part dies mid-action and the client still
//! gets the action's result. The clients are small REAPI clients in Rust
//! (CAS BatchUpdateBlobs, Execution.Execute), so these tests need nothing
//! but the `corral` binary. docs/failures.md says what each fault costs.

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used)]

#[path = "faults/corral_up.rs"]
mod corral_up;
#[path = "faults/graceful_stop.rs"]
mod graceful_stop;
#[path = "faults/restarts.rs"]
mod restarts;
#[path = "faults/size_classes.rs"]
mod size_classes;
