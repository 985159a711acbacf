//! The control plane's side of run-time changes (`crate::runtime`): one [`Control`] per
//! server, used by the admin API's threads, never by a shard.
//!
//! A change is applied in this order, one change at a time:
//! 1. validated against the effective configuration ([`crate::runtime::State::apply`]);
//!    a refusal changes nothing;
//! 2. what the shards cannot do without blocking is done here: a new disk store's or
//!    persistent sender's directory is created, a new receiver's ports are picked, new
//!    region ids are written to the id table;
//! 3. the shards take it in two steps over the server's own client port, as every admin
//!    request does: `STRAIT.LAYOUT PREPARE` opens what is new on every shard (so no shard
//!    can see a client name a region another shard does not have yet), then
//!    `STRAIT.LAYOUT COMMIT` switches every shard to the new configuration;
//! 4. the journal is written (synced, renamed), so the change comes back after a restart,
//!    and the receiver endpoints the registration agents advertise are updated.

use crate::config::SiteConfig;
use crate::runtime::{Change, ChangeError, Journal, JournalError, RegionIds, State};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use strait_net::locator::ReceiverEndpoint;

/// Why a change did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Refused(#[from] ChangeError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{0}")]
    Directory(String),
    #[error(transparent)]
    Ports(#[from] crate::wan::PortRangeError),
    /// The shards did not take the change (before the commit: nothing changed).
    #[error("the server did not take the change: {0}")]
    Shards(String),
    /// The shards took the change, some with an error (the change is kept).
    #[error("the change was made, with an error on the server: {0}")]
    Partly(String),
}

#[derive(Debug)]
struct Inner {
    state: State,
    journal: Journal,
    ids: RegionIds,
    /// The receiver's ports, one per shard, while the server has a receiver.
    receiver_ports: Vec<u16>,
}

/// What the control plane knows of a running server's configuration.
#[derive(Debug)]
pub struct Control {
    inner: Mutex<Inner>,
    client: SocketAddr,
    shards: u16,
    /// The receiver endpoints the registration agents advertise.
    receivers: Arc<Mutex<Vec<ReceiverEndpoint>>>,
}

impl Control {
    pub(crate) fn new(
        (state, journal, ids): (State, Journal, RegionIds),
        client: SocketAddr,
        shards: u16,
        (receiver_ports, receivers): (Vec<u16>, Arc<Mutex<Vec<ReceiverEndpoint>>>),
    ) -> Control {
        Control {
            inner: Mutex::new(Inner {
                state,
                journal,
                ids,
                receiver_ports,
            }),
            client,
            shards,
            receivers,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent state (it is replaced whole).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The running configuration.
    pub fn config(&self) -> SiteConfig {
        self.lock().state.config.clone()
    }

    /// Every disk store: (name, directory, the senders whose queues are in it).
    pub fn disk_stores(&self) -> Vec<(String, PathBuf, Vec<String>)> {
        let inner = self.lock();
        let state = &inner.state;
        state
            .config
            .disk_stores
            .iter()
            .map(|d| {
                let dir = d.path(&state.config.server.directory);
                (d.name.clone(), dir, state.senders_in(&d.name))
            })
            .collect()
    }

    /// Makes `change` (module docs for the steps).
    pub fn change(&self, change: Change) -> Result<(), ControlError> {
        let mut inner = self.lock();
        if inner.journal.changes.len() >= crate::runtime::JOURNAL_CHANGES_MAX {
            return Err(ChangeError::InUse(format!(
                "the journal holds {} changes, the most it keeps; put the configuration in site.toml (`strait describe config`), then remove {}",
                crate::runtime::JOURNAL_CHANGES_MAX,
                inner.state.config.server.directory.join(crate::runtime::JOURNAL_FILE).display()
            ))
            .into());
        }
        let next = inner.state.apply(&change)?;
        let dir = next.config.server.directory.clone();
        let make_dir = |d: &std::path::Path, what: &str| {
            std::fs::create_dir_all(d).map_err(|e| {
                ControlError::Directory(format!("{what}: cannot create {}: {e}", d.display()))
            })
        };
        match &change {
            Change::CreateDiskStore { name, .. } => {
                if let Some(d) = next.disk_store_path(name) {
                    make_dir(&d, &format!("disk store `{name}`"))?;
                }
            }
            Change::CreateGatewaySender { .. } => {
                for def in &next.config.senders {
                    if def.enable_persistence
                        && !inner.state.config.senders.iter().any(|s| s.id == def.id)
                    {
                        make_dir(&def.disk_dir, &format!("gateway sender `{}`", def.id))?;
                    }
                }
            }
            _ => {}
        }
        let ids = inner
            .ids
            .assign(&next.config)
            .ok_or_else(|| JournalError::RegionIdsFull {
                file: dir.join(crate::runtime::REGION_IDS_FILE),
            })?;
        if ids != inner.ids {
            ids.save(&dir)?;
            inner.ids = ids.clone();
        }
        let ports = match (&inner.state.config.receiver, &next.config.receiver) {
            (None, Some(def)) => crate::wan::pick_receiver_ports(def, usize::from(self.shards))?,
            (Some(_), Some(_)) => inner.receiver_ports.clone(),
            _ => Vec::new(),
        };
        if next.config != inner.state.config {
            self.layout(&next.config, &ids, &ports, false)
                .map_err(ControlError::Shards)?;
            let committed = self.layout(&next.config, &ids, &ports, true);
            inner.receiver_ports = ports;
            self.advertise(&next.config, &inner.receiver_ports);
            inner.journal.changes.push(change.clone());
            inner.journal.save(&dir)?;
            inner.state = next;
            committed.map_err(ControlError::Partly)?;
        } else {
            inner.journal.changes.push(change.clone());
            inner.journal.save(&dir)?;
            inner.state = next;
        }
        tracing::info!("run-time change: {}", change.summary());
        Ok(())
    }

    /// Sends `STRAIT.LAYOUT` to the server's shards.
    fn layout(
        &self,
        config: &SiteConfig,
        ids: &RegionIds,
        ports: &[u16],
        commit: bool,
    ) -> Result<(), String> {
        let mut c = crate::admin::RespClient::connect(self.client)
            .map_err(|e| format!("this server's client port did not answer: {e}"))?;
        let text = crate::config::to_toml(config);
        let names = serde_json::to_string(&ids.names).map_err(|e| e.to_string())?;
        let ports = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let phase: &[u8] = if commit { b"COMMIT" } else { b"PREPARE" };
        let args: [&[u8]; 5] = [
            b"STRAIT.LAYOUT",
            phase,
            text.as_bytes(),
            names.as_bytes(),
            ports.as_bytes(),
        ];
        match c.call(&args) {
            Ok(strait_net::resp::Reply::Simple(_)) => Ok(()),
            Ok(strait_net::resp::Reply::Error(e)) => {
                let e = String::from_utf8_lossy(&e).into_owned();
                Err(e.strip_prefix("ERR ").unwrap_or(&e).to_string())
            }
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The receiver endpoints to advertise: each shard's port with its buckets.
    fn advertise(&self, config: &SiteConfig, ports: &[u16]) {
        let endpoints = match (
            &config.receiver,
            crate::wan::wan_table(
                config.regions.iter().map(|r| r.total_num_buckets),
                self.shards,
            ),
        ) {
            (Some(def), Some(table)) => crate::wan::advertised_receivers(def, ports, &table),
            _ => Vec::new(),
        };
        *self.receivers.lock().unwrap_or_else(|p| p.into_inner()) = endpoints;
    }
}
