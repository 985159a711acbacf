//! `strait-fuzz`: runs one fuzz target for a while, or replays inputs through it.
//!
//! ```text
//! strait-fuzz <target> [--seconds N] [--seed S] [--corpus DIR] [--save]
//! strait-fuzz <target> --replay FILE...
//! ```
//!
//! A failing input is written to `fuzz/crashes/<target>-<crc>.bin` and the run exits 1.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use strait_fuzz::{Fuzzer, TARGETS, target};

#[derive(Parser, Debug)]
#[command(about = "Fuzz a Strait decoder or parser on stable Rust")]
struct Args {
    /// frame, resp, segment, config, cachexml or deadletter.
    target: String,
    /// How long to run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The generator's seed (default: from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// The seed corpus directory (default: fuzz/corpus/<target>).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Write inputs with new outcomes into the corpus directory.
    #[arg(long)]
    save: bool,
    /// Run these files once each instead of fuzzing.
    #[arg(long, num_args = 1..)]
    replay: Vec<PathBuf>,
}

fn read_dir(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Some(t) = target(&args.target) else {
        let names: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
        bail!(
            "unknown target {:?}; targets: {}",
            args.target,
            names.join(", ")
        );
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !args.replay.is_empty() {
        let mut failed = false;
        for file in &args.replay {
            let input =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let mut f = Fuzzer::new(t, 0, Vec::new());
            match f.run_one(input) {
                Ok(_) => println!("{}: ok", file.display()),
                Err(e) => {
                    failed = true;
                    println!("{}: FAILED: {}", file.display(), e.why);
                }
            }
        }
        if failed {
            std::process::exit(1);
        }
        return Ok(());
    }
    let corpus_dir = args
        .corpus
        .unwrap_or_else(|| root.join("corpus").join(t.name));
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let corpus = read_dir(&corpus_dir);
    let seeds = corpus.len();
    // Silence the default hook: panics are caught and reported with their input.
    std::panic::set_hook(Box::new(|_| {}));
    let mut f = Fuzzer::new(t, seed, corpus);
    println!(
        "target {} seed {seed}: {seeds} corpus inputs, {} outcomes",
        t.name,
        f.labels.len()
    );
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let mut report = start;
    while Instant::now() < deadline {
        for _ in 0..256 {
            let input = f.next_input();
            match f.run_one(input) {
                Ok(true) if args.save => {
                    let input = f.corpus.last().expect("just added");
                    let name = format!("{:08x}.bin", crc32fast_hash(input));
                    std::fs::create_dir_all(&corpus_dir)?;
                    std::fs::write(corpus_dir.join(name), input)?;
                }
                Ok(_) => {}
                Err(failure) => {
                    let dir = root.join("crashes");
                    std::fs::create_dir_all(&dir)?;
                    let file = dir.join(format!(
                        "{}-{:08x}.bin",
                        t.name,
                        crc32fast_hash(&failure.input)
                    ));
                    std::fs::write(&file, &failure.input)?;
                    println!(
                        "FAILED after {} executions: {}\ninput: {}",
                        f.executions,
                        failure.why,
                        file.display()
                    );
                    std::process::exit(1);
                }
            }
        }
        if report.elapsed() >= Duration::from_secs(30) {
            report = Instant::now();
            println!(
                "{:>5} s: {} executions, {} outcomes, corpus {}",
                start.elapsed().as_secs(),
                f.executions,
                f.labels.len(),
                f.corpus.len()
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "target {} seed {seed}: {} executions in {secs:.0} s ({:.0}/s), {} outcomes, corpus {}",
        t.name,
        f.executions,
        f.executions as f64 / secs,
        f.labels.len(),
        f.corpus.len()
    );
    Ok(())
}

fn crc32fast_hash(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}
