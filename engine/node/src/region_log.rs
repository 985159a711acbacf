//! Persistent regions: every write a region applies is logged, and the log is restored into
//! the region's store when its shard starts.
//!
//! A region's log on one shard is a gateway-sender queue that nothing dispatches: one queue,
//! persistent, group-committed per batch (`every-batch`), in `<directory>/regions/<name>/
//! shard-<i>/`. A write is appended to it exactly like to a sender's queue (room checked
//! first, the store updated after every queue took it, the reply after it is durable), so a
//! write that got its reply survives a crash of the process. The records are the queue's own
//! format; [`open`] replays them in order through
//! [`strait_engine::apply::restore_logged`], which gives local writes back their versions and
//! remote ones their dedupe marks, so a resend from another site after a restart is still
//! recognised as a duplicate.
//!
//! The log is not compacted yet: it grows by one record per write until the region is
//! cleared (documented in `docs/configuration.md`).

use std::path::{Path, PathBuf};
use strait_engine::apply::restore_logged;
use strait_engine::region::RegionStore;
use strait_queue::ids::{QueueId, SiteId};
use strait_queue::queue::{QueueConfig, SyncPolicy};
use strait_queue::record;
use strait_queue::shard::ShardQueue;

/// The one queue of a region log.
pub const LOG_QUEUE: QueueId = QueueId(0);
/// Records read from the log per step of a restore.
pub const RESTORE_BATCH_EVENTS_MAX: u32 = 4096;
/// Bytes read from the log per step of a restore.
pub const RESTORE_BATCH_BYTES_MAX: u64 = 16 << 20;

/// Why a region log could not be opened or restored.
#[derive(Debug, thiserror::Error)]
pub enum RegionLogError {
    #[error("region `{region}`: cannot open its log in {dir}: {reason}")]
    Open {
        region: String,
        dir: PathBuf,
        reason: String,
    },
    #[error("region `{region}`: its log in {dir} cannot be read back: {reason}")]
    Read {
        region: String,
        dir: PathBuf,
        reason: String,
    },
}

/// Where a region's log lives on one shard.
pub fn log_dir(directory: &Path, region: &str, shard: u16) -> PathBuf {
    directory
        .join("regions")
        .join(region)
        .join(format!("shard-{shard}"))
}

/// The queue configuration of a region log.
pub fn log_config() -> QueueConfig {
    QueueConfig {
        queue_count: 1,
        persistent: true,
        disk_synchronous: true,
        sync: SyncPolicy::EveryBatch,
        ..QueueConfig::default()
    }
}

/// What a restore found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Records read from the log.
    pub records: u64,
    /// Records that changed the store (the others were second copies or no-ops).
    pub applied: u64,
}

/// Opens the log of `region` in `dir` (recovering it) and restores it into `store`.
pub async fn open(
    region: &str,
    dir: PathBuf,
    store: &mut RegionStore,
    local_site: SiteId,
) -> Result<(ShardQueue, Restored), RegionLogError> {
    let (log, _report) = ShardQueue::open(dir.clone(), log_config())
        .await
        .map_err(|e| RegionLogError::Open {
            region: region.to_string(),
            dir: dir.clone(),
            reason: e.to_string(),
        })?;
    let read_error = |reason: String| RegionLogError::Read {
        region: region.to_string(),
        dir: dir.clone(),
        reason,
    };
    let mut restored = Restored::default();
    loop {
        let step = log.with(|q| -> Result<Option<Restored>, String> {
            let Some(batch) = q
                .peek(LOG_QUEUE, RESTORE_BATCH_EVENTS_MAX, RESTORE_BATCH_BYTES_MAX)
                .map_err(|e| e.to_string())?
            else {
                return Ok(None);
            };
            let mut step = Restored::default();
            for slice in q.batch_slices(&batch) {
                let mut at = 0;
                while at < slice.len() {
                    let rec = record::decode(&slice[at..]).map_err(|e| e.to_string())?;
                    at += rec.len();
                    step.records += 1;
                    if restore_logged(store, &rec, local_site).map_err(|e| e.to_string())? {
                        step.applied += 1;
                    }
                }
            }
            Ok(Some(step))
        });
        match step.map_err(read_error)? {
            Some(step) => {
                restored.records += step.records;
                restored.applied += step.applied;
            }
            None => break,
        }
    }
    Ok((log, restored))
}
