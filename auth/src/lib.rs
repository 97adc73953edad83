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
//! - [`caller`] — who made a call: certificate, token, or anonymous.
//! - `permission` — the words a grant allows (`execute`, `ac-write`, …).
//! - `grants` — the grants file: callers to instance names, permissions
//!   and sandbox policies.
//! - [`certificate`] — the identity a verified client certificate proves.
//! - `authentication` — the tower layer that establishes each call's
//!   caller, or answers UNAUTHENTICATED.
//! - [`token`] — bearer tokens (JWT): keys, verification, what was wrong.
//! - `verified` — credentials verified once, remembered (bounded).
//! - [`config`] — the `[auth]` table of a serving daemon.
//! - [`quote`] — how refusals quote client input (cut when long).
//! - `authorizer` — the per-call question services ask.

#![forbid(unsafe_code)]

mod authentication;
mod authorizer;
pub mod caller;
pub mod certificate;
pub mod certs;
pub mod channel;
pub mod config;
mod grants;
mod permission;
pub mod quote;
pub mod tls;
pub mod token;
mod verified;

pub use authentication::{AuthenticationLayer, Authenticator};
pub use authorizer::Authorizer;
pub use caller::Caller;
pub use config::{Auth, AuthConfig};
pub use grants::Grants;
pub use permission::Permission;
