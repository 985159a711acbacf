//! # strait-node: a Strait server
//!
//! | type | what it is |
//! |---|---|
//! | [`config::SiteConfig`] | a validated `site.toml`: server settings, regions, gateway senders, the gateway receiver; every default a named constant in [`config`] |
//! | [`config::ConfigError`] | a refusal naming the file, the line, the key and the reason |
//! | [`config::HostPort`] | a locator address, `host:port` or Geode's `host[port]` |
//!
//! ```
//! let cfg = strait_node::config::parse(
//!     "site.toml".as_ref(),
//!     "[server]\ndistributed-system-id = 1\n[[region]]\nname = \"orders\"\ntype = \"partition\"\n",
//! )
//! .unwrap();
//! assert_eq!(cfg.regions[0].total_num_buckets, 113);
//! ```

#![forbid(unsafe_code)]

pub mod command;
pub mod config;
pub mod server;
