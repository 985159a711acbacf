//! `strait-segment dump`: the header and every record of a segment, or the records found at
//! any offset of another file (a quarantine file, a segment whose header is damaged).

use crate::report::{self, HeaderReport, ScanReport};
use crate::walk::{self, Entry};
use serde::Serialize;
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use strait_queue::segment::SEGMENT_HEADER_BYTES;

/// How the file was read.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A valid segment header; records read from offset 64; recovery's verdict.
    Segment {
        header: HeaderReport,
        scan: ScanReport,
    },
    /// No valid segment header (`reason`); records looked for from offset 0.
    NotSegment { reason: String },
}

/// Everything `dump` prints about one file.
#[derive(Debug, Serialize)]
pub struct Dump {
    pub file: String,
    pub size: usize,
    #[serde(flatten)]
    pub kind: Kind,
    pub entries: Vec<Entry>,
}

/// Reads `path` and everything in it.
pub fn dump_file(path: &Path) -> io::Result<Dump> {
    let data = fs::read(path)?;
    let (kind, start) = match report::check(&data) {
        Ok((header, scan)) => (Kind::Segment { header, scan }, SEGMENT_HEADER_BYTES),
        Err(e) => (
            Kind::NotSegment {
                reason: e.to_string(),
            },
            0,
        ),
    };
    Ok(Dump {
        file: path.display().to_string(),
        size: data.len(),
        kind,
        entries: walk::walk(&data, start),
    })
}

/// Writes one dump: a block of lines, or one JSON object.
pub fn print(out: &mut dyn Write, dump: &Dump, json: bool) -> io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, dump)?;
        return writeln!(out);
    }
    writeln!(out, "== {} ({} bytes)", dump.file, dump.size)?;
    match &dump.kind {
        Kind::Segment { header, .. } => writeln!(out, "segment {header}")?,
        Kind::NotSegment { reason } => writeln!(
            out,
            "not a segment ({reason}); looking for records at every offset"
        )?,
    }
    let (mut records, mut bad_crc, mut garbage) = (0, 0, 0);
    for entry in &dump.entries {
        writeln!(out, "{entry}")?;
        match entry {
            Entry::Record(line) => {
                records += 1;
                bad_crc += usize::from(!line.crc_ok);
            }
            Entry::Garbage { offset, end, .. } => garbage += end - offset,
        }
    }
    writeln!(
        out,
        "found {records} record(s), {bad_crc} with a bad CRC; {garbage} byte(s) outside valid records"
    )?;
    if let Kind::Segment { scan, .. } = &dump.kind {
        writeln!(out, "recovery: {scan}")?;
        writeln!(out, "tail: {}", scan.tail)?;
    }
    Ok(())
}
