//! The glommio shell on real memory-mapped files: a reopen round trip, a full disk, an
//! unusable directory.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use strait_queue::ids::*;
use strait_queue::queue::{AppendError, QueueConfig, SyncPolicy};
use strait_queue::record::Op;
use strait_queue::shard::{OpenError, ShardAppendError, ShardQueue};

const Q: QueueId = QueueId(0);

fn cfg() -> QueueConfig {
    QueueConfig {
        queue_count: 2,
        memory_bytes_max: 1 << 20,
        persistent: true,
        disk_synchronous: true,
        sync: SyncPolicy::EveryBatch,
        conflation: false,
        segment_bytes: 256 << 10,
        spare_segments: 2,
        journal_recycle_segments: 8,
    }
}

/// Runs `f` on a fresh single-shard executor, failing the test after `deadline`.
fn on_shard<F, Fut, T>(deadline: Duration, f: F) -> T
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("executor");
    ex.run(async move {
        glommio::timer::timeout(deadline, async { Ok(f().await) })
            .await
            .expect("test exceeded its deadline")
    })
}

async fn append(sq: &ShardQueue, n: u64, len: usize) -> Result<Seq, ShardAppendError> {
    let (k, v) = event_parts(n, len);
    sq.append(Q, &event(Op::Create, n, &k, &v)).await
}

#[test]
fn appends_survive_close_and_reopen() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().to_path_buf();
    on_shard(Duration::from_secs(60), || async move {
        let (sq, report) = ShardQueue::open(dir.clone(), cfg()).await.unwrap();
        assert_eq!(report.events, 0);
        for n in 0..2000 {
            append(&sq, n, 700).await.unwrap();
        }
        let b = sq.with(|q| q.peek(Q, 500, 1 << 30)).unwrap().unwrap();
        sq.with(|q| q.ack(Q, b.last_seq)).unwrap();
        sq.close().await.unwrap();
        let (sq, report) = ShardQueue::open(dir, cfg()).await.unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.events, 1500);
        let got = sq.with(|q| drain_numbers(q, Q));
        assert_eq!(got, (500..2000).collect::<Vec<_>>());
        sq.close().await.unwrap();
    });
}

#[test]
fn a_second_process_cannot_open_a_locked_directory() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().to_path_buf();
    on_shard(Duration::from_secs(30), || async move {
        let (sq, _) = ShardQueue::open(dir.clone(), cfg()).await.unwrap();
        let err = ShardQueue::open(dir.clone(), cfg()).await.unwrap_err();
        assert!(
            err.to_string().contains("in use by another Strait process"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&dir.join("LOCK").display().to_string()),
            "{err}"
        );
        sq.close().await.unwrap();
    });
}

#[test]
fn an_unusable_directory_is_a_clear_error() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let dir = file.join("queue");
    on_shard(Duration::from_secs(30), || async move {
        let err = ShardQueue::open(dir.clone(), cfg()).await.unwrap_err();
        assert!(matches!(err, OpenError::Store(_)), "{err}");
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
    });
}

/// Mounts a 2 MiB tmpfs at `at`; `false` when this machine does not allow it.
fn mount_small_tmpfs(at: &Path) -> bool {
    Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=2m",
            "strait-test",
            &at.display().to_string(),
        ])
        .status()
        .is_ok_and(|s| s.success())
}

struct Unmount<'a>(&'a Path);
impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn a_full_disk_refuses_new_events_and_loses_none_accepted() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    if !mount_small_tmpfs(&mnt) {
        eprintln!(
            "SKIPPED a_full_disk_refuses_new_events_and_loses_none_accepted: cannot mount a tmpfs here (needs root)"
        );
        return;
    }
    let _unmount = Unmount(&mnt);
    let dir = mnt.join("queue");
    let cfg = QueueConfig {
        segment_bytes: 128 << 10,
        spare_segments: 1,
        journal_recycle_segments: 8,
        ..cfg()
    };
    on_shard(Duration::from_secs(60), || async move {
        let (sq, _) = ShardQueue::open(dir.clone(), cfg.clone()).await.unwrap();
        let mut accepted = Vec::new();
        let err = loop {
            let n = accepted.len() as u64;
            match append(&sq, n, 1000).await {
                Ok(_) => accepted.push(n),
                Err(e) => break e,
            }
            assert!(n < 100_000, "a 2 MiB disk never filled up");
        };
        match &err {
            ShardAppendError::Rejected(AppendError::Disk(e)) => assert!(e.is_disk_full(), "{e}"),
            other => panic!("expected a full-disk error, got {other}"),
        }
        assert!(err.to_string().contains("No space left on device"), "{err}");
        assert!(accepted.len() > 100);
        // Everything accepted is still queued and readable, and survives a restart.
        assert_eq!(sq.with(|q| q.stats(0)).events_queued, accepted.len() as u64);
        sq.close().await.unwrap();
        let (sq, report) = ShardQueue::open(dir, cfg).await.unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(sq.with(|q| drain_numbers(q, Q)), accepted);
        sq.close().await.unwrap();
    });
}

#[test]
fn close_leaves_only_what_a_restart_needs() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().to_path_buf();
    on_shard(Duration::from_secs(60), || async move {
        let (sq, _) = ShardQueue::open(dir.clone(), cfg()).await.unwrap();
        for n in 0..3000 {
            append(&sq, n, 700).await.unwrap();
        }
        while let Some(b) = sq.with(|q| q.peek(Q, 1000, 1 << 30)).unwrap() {
            sq.with(|q| q.ack(Q, b.last_seq)).unwrap();
        }
        sq.close().await.unwrap();
        let segs = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count();
        assert_eq!(
            segs, 1,
            "fully acknowledged segments and spares are deleted at close; the last segment stays"
        );
        let (sq, report) = ShardQueue::open(dir, cfg()).await.unwrap();
        assert!(
            report.is_clean() && report.discarded.is_empty(),
            "{report:?}"
        );
        assert_eq!(
            append(&sq, 3000, 10).await.unwrap(),
            Seq(3001),
            "the position survives"
        );
        sq.close().await.unwrap();
    });
}
