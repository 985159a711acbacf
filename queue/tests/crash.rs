//! Kill -9 on real files. A child process (this test binary, re-run as `crash_child`) appends
//! to memory-mapped segment files through the glommio shell and reports what is durable and
//! what it acknowledged; the parent kills it with SIGKILL at a random moment, reopens the
//! files and checks that every durable, unacknowledged event is there, in order, and nothing
//! else. Then the next child continues on the same files.

mod common;
use common::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use strait_queue::ids::*;
use strait_queue::mem::SplitMix;
use strait_queue::mmap::MmapDisk;
use strait_queue::queue::{JOURNAL_QUEUE_COUNT_MIN, QueueConfig, SyncPolicy};
use strait_queue::record;
use strait_queue::shard::{OpenError, ShardQueue};
use strait_queue::store::recover;

const QUEUES: u16 = 3;
const RUNS_PER_POLICY: u64 = 60;
/// Bound on how long one child may take to say anything.
const LINE_TIMEOUT: Duration = Duration::from_secs(20);

fn config(policy: &str) -> QueueConfig {
    QueueConfig {
        // The children write queues 0..QUEUES; with the journal's minimum count of queues, the
        // sender commits through its journal (the others stay empty).
        queue_count: match policy {
            "every-batch-journal" => JOURNAL_QUEUE_COUNT_MIN,
            _ => QUEUES,
        },
        memory_bytes_max: 1 << 20,
        persistent: true,
        disk_synchronous: true,
        sync: match policy {
            "never" => SyncPolicy::Never,
            _ => SyncPolicy::EveryBatch,
        },
        conflation: false,
        segment_bytes: 128 << 10,
        spare_segments: 2,
        journal_recycle_segments: 8,
    }
}

/// Event number: which run appended it, to which queue, and its index within that run.
fn number(run: u64, q: u16, i: u64) -> u64 {
    run * 1_000_000_000 + q as u64 * 100_000_000 + i
}

fn value_len(n: u64) -> usize {
    (n % 7) as usize * 150 + 10
}

#[test]
#[ignore = "the child process of kill_minus_nine_loses_nothing_durable"]
fn crash_child() {
    let (Ok(dir), Ok(policy), Ok(run)) = (
        std::env::var("STRAIT_CRASH_DIR"),
        std::env::var("STRAIT_CRASH_POLICY"),
        std::env::var("STRAIT_CRASH_RUN"),
    ) else {
        return;
    };
    let run: u64 = run.parse().unwrap();
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .unwrap();
    ex.run(async move {
        // The parent's test threads spawn children concurrently: a child forked by the other
        // test at the moment this test's parent held the directory lock (checking the last
        // run) keeps that lock until it execs. Wait for it, with a deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        let sq = loop {
            match ShardQueue::open(PathBuf::from(&dir), config(&policy)).await {
                Ok((sq, _)) => break sq,
                Err(OpenError::Store(e))
                    if e.kind == std::io::ErrorKind::ResourceBusy && Instant::now() < deadline =>
                {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("opening the queue: {e}"),
            }
        };
        println!("@@ opened");
        let mut rng = SplitMix(run);
        let mut next = [0u64; QUEUES as usize];
        loop {
            for q in 0..QUEUES {
                let burst = 1 + rng.next_u64() % 20;
                let mut last = Seq(0);
                for _ in 0..burst {
                    let n = number(run, q, next[q as usize]);
                    next[q as usize] += 1;
                    let (key, v) = event_parts(n, value_len(n));
                    last = sq
                        .append_nowait(QueueId(q), &event(record::Op::Create, n, &key, &v))
                        .await
                        .unwrap();
                }
                sq.wait_durable(QueueId(q), last).await.unwrap();
                // Every event of this queue appended so far in this run is durable.
                println!("@@ d {q} {}", number(run, q, next[q as usize] - 1));
            }
            if rng.next_u64().is_multiple_of(3) {
                let q = QueueId((rng.next_u64() % QUEUES as u64) as u16);
                let events = 1 + (rng.next_u64() % 40) as u32;
                let batch = sq.with(|s| {
                    let b = s.peek(q, events, 1 << 20).unwrap()?;
                    let last = *batch_numbers(s, &b).last().unwrap();
                    Some((b.last_seq, last))
                });
                if let Some((seq, n)) = batch {
                    // Announced first: a kill between the ack and its report must not make
                    // the parent expect events that were in fact acknowledged.
                    println!("@@ A {} {n}", q.0);
                    sq.with(|s| s.ack(q, seq)).unwrap();
                    println!("@@ a {} {n}", q.0);
                }
            }
        }
    });
}

/// What the parent knows from the child's reports, per queue.
#[derive(Default, Debug)]
struct Known {
    /// Events reported durable: (run, queue) → highest index.
    durable: HashMap<(u64, u16), u64>,
    /// Highest event number reported acknowledged, per queue.
    acked: HashMap<u16, u64>,
    /// Highest event number announced for acknowledgement (maybe acknowledged), per queue.
    acking: HashMap<u16, u64>,
}

fn check(dir: &Path, policy: &str, known: &Known, appended_upto: &HashMap<(u64, u16), u64>) {
    let disk = MmapDisk::open(dir).expect("the killed child no longer holds the lock");
    let (mut q, report) = recover(config(policy), &disk).expect("recovery");
    // A SIGKILL leaves the page cache intact: at most the record being copied when the
    // signal landed is torn (one per queue); nothing is corrupt and nothing is missing.
    assert!(
        report.corrupt.is_empty() && report.gaps.is_empty(),
        "{policy}: {report:?}"
    );
    assert!(report.torn.len() <= QUEUES as usize, "{policy}: {report:?}");
    for qid in 0..QUEUES {
        q.reset(QueueId(qid));
        let got = drain_numbers(&mut q, QueueId(qid));
        let acked = known.acked.get(&qid).copied().unwrap_or(0);
        let maybe_acked = known.acking.get(&qid).copied().unwrap_or(0).max(acked);
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "{policy}: queue {qid} in order"
        );
        assert!(
            got.iter().all(|&n| n > acked || acked == 0),
            "{policy}: queue {qid} holds acknowledged events"
        );
        // Per run, events form one contiguous run of indices.
        let mut by_run: HashMap<u64, Vec<u64>> = HashMap::new();
        for &n in &got {
            assert_eq!(
                (n / 100_000_000) % 10,
                qid as u64,
                "{policy}: event {n} in the wrong queue"
            );
            by_run
                .entry(n / 1_000_000_000)
                .or_default()
                .push(n % 100_000_000);
        }
        for (run, idx) in &by_run {
            assert!(
                idx.windows(2).all(|w| w[1] == w[0] + 1),
                "{policy}: run {run} queue {qid} has a hole: {idx:?}"
            );
            // At most one burst (20 events) beyond the last report can have been appended.
            let max = appended_upto.get(&(*run, qid)).map_or(19, |m| m + 20);
            assert!(
                *idx.last().unwrap() <= max,
                "{policy}: events that were never appended"
            );
        }
        // Every durable, unacknowledged event is there.
        for (&(run, q2), &upto) in &known.durable {
            if q2 != qid {
                continue;
            }
            for i in 0..=upto {
                let n = number(run, qid, i);
                if n > maybe_acked {
                    assert!(
                        got.binary_search(&n).is_ok(),
                        "{policy}: durable event {n} lost"
                    );
                }
            }
        }
    }
}

fn run_policy(policy: &str) {
    let tmp = tempfile::Builder::new()
        .prefix("strait-crash")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let dir = tmp.path().to_path_buf();
    let exe = std::env::current_exe().unwrap();
    let mut known = Known::default();
    let mut appended_upto = HashMap::new();
    let mut rng = SplitMix(0xC0FFEE);
    let deadline = Instant::now() + Duration::from_secs(240);
    for run in 1..=RUNS_PER_POLICY {
        assert!(
            Instant::now() < deadline,
            "{policy}: crash test over its time bound"
        );
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("STRAIT_CRASH_DIR", &dir)
            .env("STRAIT_CRASH_POLICY", policy)
            .env("STRAIT_CRASH_RUN", run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill after a random number of reports: somewhere in the middle of appends, syncs,
        // segment rotations and acks.
        let kill_after = 1 + rng.next_u64() % 40;
        let mut seen = 0;
        let mut opened = false;
        let mut killed = false;
        loop {
            if seen >= kill_after && !killed {
                child.kill().unwrap(); // SIGKILL
                killed = true;
            }
            // After the kill, read what the child wrote before it died, to the end.
            let line = match rx.recv_timeout(LINE_TIMEOUT) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Disconnected) if killed => break,
                Err(e) => panic!("{policy} run {run}: child silent or gone: {e}"),
            };
            let Some(at) = line.find("@@ ") else { continue };
            let parts: Vec<&str> = line[at + 3..].split_whitespace().collect();
            match parts.as_slice() {
                ["opened"] => {
                    opened = true;
                    if run == 1 {
                        let err = MmapDisk::open(&dir).unwrap_err();
                        assert!(
                            err.to_string().contains("in use by another Strait process"),
                            "{err}"
                        );
                    }
                }
                ["d", q, n] => {
                    let (q, n): (u16, u64) = (q.parse().unwrap(), n.parse().unwrap());
                    known.durable.insert((run, q), n % 100_000_000);
                    appended_upto.insert((run, q), n % 100_000_000);
                    seen += 1;
                }
                ["A", q, n] => {
                    let (q, n): (u16, u64) = (q.parse().unwrap(), n.parse().unwrap());
                    let e = known.acking.entry(q).or_default();
                    *e = (*e).max(n);
                }
                ["a", q, n] => {
                    let (q, n): (u16, u64) = (q.parse().unwrap(), n.parse().unwrap());
                    let e = known.acked.entry(q).or_default();
                    *e = (*e).max(n);
                    seen += 1;
                }
                _ => {}
            }
        }
        assert!(opened);
        child.wait().unwrap();
        reader.join().unwrap();
        check(&dir, policy, &known, &appended_upto);
    }
}

#[test]
fn kill_minus_nine_loses_nothing_durable_sync_every_batch() {
    run_policy("every-batch");
}

#[test]
fn kill_minus_nine_loses_nothing_durable_sync_every_batch_with_a_commit_journal() {
    assert!(config("every-batch-journal").commit_journal());
    assert!(!config("every-batch").commit_journal());
    run_policy("every-batch-journal");
}

#[test]
fn kill_minus_nine_loses_nothing_durable_sync_never() {
    run_policy("never");
}
