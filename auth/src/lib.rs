//! Who is calling, and what they may do. Every daemon that serves or
//! connects over the network goes through this crate, so that one farm
//! can be shared by tenants who must not see or disturb each other.
//!
//! The crate holds no service of its own: the daemons wrap their gRPC
//! routes in what it offers and ask it, per call, whether the caller holds
//! a grant. It must never log a credential (a token, a key), and never tell
//! a caller which keys or identities exist.
//!
//! Modules:
//! - [`tls`] — the `[tls]` and `[client_tls]` tables, read and checked
//!   into rustls material at start-up.
//! - [`channel`] — every client channel to another daemon: TLS, and the
//!   bearer token on each call.
//! - [`certs`] — a CA, server and client certificates made here, for
//!   `corral up --secure` and tests.

#![forbid(unsafe_code)]

pub mod certs;
pub mod channel;
pub mod tls;
