//! `strait-sim`: runs seeds of the deterministic simulation (see the library docs).
//!
//! ```text
//! strait-sim --seeds 1000 [--from 1]     # seeds 1..=1000; exit 1 at the first failure
//! strait-sim --seed 42 --trace           # one seed, printing everything it does
//! ```

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Deterministic multi-site simulation of Strait's WAN replication")]
struct Args {
    /// How many seeds to run, from --from.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Run this one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Print the trace as the seed runs.
    #[arg(long)]
    trace: bool,
}

fn main() {
    let args = Args::parse();
    let (from, count) = match args.seed {
        Some(s) => (s, 1),
        None => (args.from, args.seeds),
    };
    let start = std::time::Instant::now();
    let mut totals = (0u64, 0u64, 0u64);
    for seed in from..from.saturating_add(count) {
        std::panic::set_hook(Box::new(move |info| {
            eprintln!(
                "seed {seed} PANICKED: {info}\n(replay: cargo run -p strait-sim -- --seed {seed} --trace)"
            );
        }));
        match strait_sim::run(seed, args.trace) {
            Ok(report) => {
                totals.0 += 1;
                totals.1 += report.writes_acked;
                totals.2 += report.applied;
                if args.trace || count == 1 {
                    println!("{report}");
                }
            }
            Err(failure) => {
                if !args.trace {
                    for line in failure.trace.iter().rev().take(60).rev() {
                        println!("{line}");
                    }
                }
                println!("{failure}");
                std::process::exit(1);
            }
        }
    }
    println!(
        "{} seeds passed ({}..={}), {} writes acknowledged, {} events applied, in {:.1} s",
        totals.0,
        from,
        from + count - 1,
        totals.1,
        totals.2,
        start.elapsed().as_secs_f64()
    );
}
