//! `strait-wanem`, a WAN emulator: a TCP proxy from local ports to targets that delays,
//! caps, stalls, resets and partitions what crosses it (`docs/wanem.md`).
//!
//! - [`link`]: one direction of the link as a deterministic state machine (bytes in with the
//!   time, release times out); tested without sockets.
//! - [`proxy`]: the thread-per-connection shell, port ranges and the control port.
//! - [`overhead`]: the emulator's own cost on loopback against a direct connection.

pub mod link;
pub mod overhead;
pub mod proxy;
