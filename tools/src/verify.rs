//! `strait-segment verify`: checks segment files as recovery would, one report per file.

use crate::report::{self, HeaderReport, ScanReport, TailReport};
use serde::Serialize;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use strait_queue::segment::HeaderError;

/// The verdict on one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// A valid header and records that end cleanly.
    Clean,
    /// All zeros (or empty): a spare segment never assigned to a queue, or one whose creation
    /// a crash cut short. Recovery deletes it.
    Blank,
    Torn,
    Corrupt,
    /// The header is not a valid segment header (recovery moves the file to quarantine/).
    BadHeader,
    /// A segment of a newer format (recovery refuses to open the queue).
    NewerVersion,
    /// The file could not be read.
    IoError,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Clean => "clean",
            Status::Blank => "blank",
            Status::Torn => "torn",
            Status::Corrupt => "corrupt",
            Status::BadHeader => "bad-header",
            Status::NewerVersion => "newer-version",
            Status::IoError => "io-error",
        }
    }

    /// 0: nothing to look at; 1: damage or a file recovery will not take as is; 2: I/O error.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Clean | Status::Blank => 0,
            Status::Torn | Status::Corrupt | Status::BadHeader | Status::NewerVersion => 1,
            Status::IoError => 2,
        }
    }
}

impl Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// What `verify` says about one file.
#[derive(Debug, Serialize)]
pub struct FileReport {
    pub file: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderReport>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub scan: Option<ScanReport>,
}

impl FileReport {
    fn failed(file: String, status: Status, size: Option<usize>, error: String) -> FileReport {
        FileReport {
            file,
            status,
            size,
            error: Some(error),
            header: None,
            scan: None,
        }
    }
}

/// Checks the segment file at `path`.
pub fn verify_file(path: &Path) -> FileReport {
    let file = path.display().to_string();
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) => return FileReport::failed(file, Status::IoError, None, e.to_string()),
    };
    let size = Some(data.len());
    match report::check(&data) {
        Ok((header, scan)) => FileReport {
            file,
            status: match scan.tail {
                TailReport::Clean => Status::Clean,
                TailReport::Torn { .. } => Status::Torn,
                TailReport::Corrupt { .. } => Status::Corrupt,
            },
            size,
            error: None,
            header: Some(header),
            scan: Some(scan),
        },
        // As recovery: a spare never assigned to a queue, or one whose creation a crash cut
        // short.
        Err(HeaderError::Blank | HeaderError::Short(_)) if data.iter().all(|&b| b == 0) => {
            FileReport {
                file,
                status: Status::Blank,
                size,
                error: None,
                header: None,
                scan: None,
            }
        }
        Err(e @ HeaderError::Blank) => FileReport::failed(
            file,
            Status::BadHeader,
            size,
            format!("{e}, but the rest of the file is not"),
        ),
        Err(e @ HeaderError::NewerVersion(_)) => {
            FileReport::failed(file, Status::NewerVersion, size, e.to_string())
        }
        Err(e) => FileReport::failed(file, Status::BadHeader, size, e.to_string()),
    }
}

/// The files `verify` checks for `paths`: each file as given, and the `*.seg` files of each
/// directory (not its sub-directories), sorted by name.
pub fn expand(paths: &[PathBuf]) -> Vec<Result<PathBuf, FileReport>> {
    let mut out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            out.push(Ok(path.clone()));
            continue;
        }
        let listed = fs::read_dir(path).and_then(|entries| {
            entries
                .map(|e| e.map(|e| e.path()))
                .collect::<io::Result<Vec<_>>>()
        });
        match listed {
            Ok(mut files) => {
                files.retain(|f| f.extension().is_some_and(|x| x == "seg") && f.is_file());
                files.sort();
                if files.is_empty() {
                    eprintln!("strait-segment: {}: no *.seg files", path.display());
                }
                out.extend(files.into_iter().map(Ok));
            }
            Err(e) => out.push(Err(FileReport::failed(
                path.display().to_string(),
                Status::IoError,
                None,
                format!("listing the directory: {e}"),
            ))),
        }
    }
    out
}

/// Writes the report of one file: one line (and a line on the tail when it is not clean), or
/// one JSON object.
pub fn print(out: &mut dyn Write, report: &FileReport, json: bool) -> io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, report)?;
        return writeln!(out);
    }
    write!(out, "{}: {}", report.file, report.status.name())?;
    if let Some(header) = &report.header {
        write!(out, " {header}")?;
    }
    if let Some(scan) = &report.scan {
        write!(out, " {scan}")?;
    }
    if let Some(size) = report.size {
        write!(out, " size={size}")?;
    }
    if let Some(error) = &report.error {
        write!(out, ": {error}")?;
    }
    writeln!(out)?;
    match &report.scan {
        Some(scan) if !scan.tail.is_clean() => writeln!(out, "  {}", scan.tail),
        _ => Ok(()),
    }
}
