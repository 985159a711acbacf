//! The library behind the measuring tools of `strait-tools`; each binary is a thin CLI.
//!
//! - [`wanem`]: `strait-wanem`, the WAN emulator (a TCP proxy with latency, bandwidth caps,
//!   stalls, resets and partitions).
//! - [`load`]: `strait-load`, the open-loop RESP load generator with its end-to-end
//!   (write at one site, seen at another) mode.

#![forbid(unsafe_code)]

pub mod load;
pub mod wanem;
