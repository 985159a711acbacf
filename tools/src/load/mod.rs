//! `strait-load`, an open-loop RESP load generator for Strait or any redis-compatible server
//! (`docs/load.md`).
//!
//! - [`workload`]: what to send and when (keys, values, read/write mix, schedule); pure.
//! - [`run`]: connections, latency histograms corrected for coordinated omission, the
//!   end-to-end poller at a second site, progress and the summary.

pub mod run;
pub mod workload;
