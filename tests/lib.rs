//! End-to-end tests of whole farms, driven by real clients, and the check
//! that crate dependencies point the way the design says. The tests are
//! the `[[test]]` targets beside this file; this library holds nothing.

#![forbid(unsafe_code)]
