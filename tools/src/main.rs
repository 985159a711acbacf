//! `strait-segment`: inspects and verifies Strait segment files (`{id:016x}.seg` in a
//! sender's data directory) and the files recovery keeps aside in `quarantine/`. It only
//! reads; formats are described in `docs/formats.md`.
//!
//! ```text
//! strait-segment dump FILE...                 header and one line per record
//! strait-segment verify DIR_OR_FILE...        recovery's checks, one line per *.seg file
//! strait-segment verify --json DIR            one JSON object per file
//! cargo run -p strait-tools --bin strait-segment -- verify /path/to/data-dir
//! ```
//!
//! Record lines read `@OFFSET len=… seq=… op=… flags=… region=… bucket=…
//! id=ORIGIN_SITE/ORIGIN_MEMBER/STREAM/STREAM_SEQ version=TIMESTAMP_US@SITE recipients=[…]
//! key="…" value_len=… crc=ok|bad`.
//!
//! Exit status of `verify`: 0 when every file is clean (or a blank spare segment), 1 when any
//! is torn, corrupt, has a bad header or a newer format version, 2 on a usage or I/O error.
//! `dump` exits 0, or 2 when a file cannot be read.

#![forbid(unsafe_code)]

mod dump;
mod report;
mod verify;
mod walk;

use clap::{Parser, Subcommand};
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "strait-segment",
    version,
    about = "Inspect and verify Strait segment files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the header and every record of each file. A file without a valid segment header
    /// (a quarantine file, for one) is searched for records at every offset.
    Dump {
        /// One JSON object per file.
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Check every segment as recovery would: header, record CRCs, sequence, tail. A
    /// directory stands for the *.seg files in it.
    Verify {
        /// One JSON object per file.
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "DIR_OR_FILE")]
        paths: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = io::BufWriter::new(io::stdout().lock());
    let result = match &cli.command {
        Command::Dump { json, files } => run_dump(&mut out, files, *json),
        Command::Verify { json, paths } => run_verify(&mut out, paths, *json),
    };
    match result.and_then(|code| out.flush().map(|()| code)) {
        Ok(code) => ExitCode::from(code),
        // The reader went away (`| head`): nothing left to say.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strait-segment: writing the output: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_dump(out: &mut dyn Write, files: &[PathBuf], json: bool) -> io::Result<u8> {
    let mut code = 0;
    for path in files {
        match dump::dump_file(path) {
            Ok(dump) => dump::print(out, &dump, json)?,
            Err(e) => {
                out.flush()?;
                eprintln!("strait-segment: {}: {e}", path.display());
                code = 2;
            }
        }
    }
    Ok(code)
}

fn run_verify(out: &mut dyn Write, paths: &[PathBuf], json: bool) -> io::Result<u8> {
    let mut code = 0;
    for item in verify::expand(paths) {
        let report = match item {
            Ok(path) => verify::verify_file(&path),
            Err(listing_failed) => listing_failed,
        };
        code = code.max(report.status.exit_code());
        verify::print(out, &report, json)?;
    }
    Ok(code)
}
