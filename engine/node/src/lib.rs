//! # strait-node: a Strait server
//!
//! | type | what it is |
//! |---|---|
//! | [`config::SiteConfig`] | a validated `site.toml`: server settings, regions, gateway senders, the gateway receiver; every default a named constant in [`config`] |
//! | [`config::ConfigError`] | a refusal naming the file, the line, the key and the reason |
//! | [`geode::load_server`] / [`geode::load_locator`] | Geode's own `cache.xml` and `gemfire.properties` read into the same [`config::SiteConfig`] (or a [`locator::LocatorConfig`]), with a [`geode::Warning`] for each thing Strait does not act on |
//! | [`config::HostPort`] | a locator address, `host:port` or Geode's `host[port]` |
//! | [`server::start`] → [`server::ServerHandle`] | a running server: one glommio shard per core |
//! | [`admin::start`] → [`admin::AdminHandle`] | a server's admin API (HTTP + JSON) and `/metrics`, on plain threads that reach the shards through the server's own client port |
//! | [`locator::start_locator`] → [`locator::LocatorHandle`] | a running locator: the site's directory behind HTTP + JSON, on one control-plane thread |
//! | [`locator::LocatorClient`] | a blocking client of a locator (register, heartbeat, the directory, least-loaded, status) |
//! | [`runtime::State`] / [`runtime::Journal`] | what is created, altered and destroyed while the server runs, validated as the file is, kept in the server's directory and replayed at start |
//! | [`control::Control`] | the admin API's side of such a change: validate, open on every shard (`STRAIT.LAYOUT PREPARE`), switch (`COMMIT`), journal, advertise |
//! | `mailbox::channel` | how a shard hands operations to the shard owning their keys and gets the replies back (wakes only the receiving task) |
//! | [`registration::Registration`] | a server's embedded locator (`start-locator`) and its registration agents, a plain thread per locator that registers, heartbeats the client-connection count and deregisters |
//!
//! Shards never call a locator: the agent reads a counter the shards update, so a locator
//! that is down or slow cannot stall a client.
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

pub mod admin;
pub mod command;
pub mod config;
pub mod control;
pub mod geode;
pub mod locator;
mod mailbox;
pub mod region_log;
pub mod registration;
pub mod runtime;
pub mod server;
pub mod wan;
