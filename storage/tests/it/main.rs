//! Storage's integration tests: one binary, a module per concern.

mod azure;
mod client_limits;
mod crafted;
mod object_store;
