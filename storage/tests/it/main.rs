//! Storage's integration tests: one binary, a module per concern.

mod azure;
mod crafted;
mod object_store;
