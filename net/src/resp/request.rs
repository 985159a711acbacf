//! Requests as a server reads them: multibulk (`*<n>\r\n$<len>\r\n<bytes>\r\n...`, what client
//! libraries send) and inline (`SET k v\r\n`, what a person types into telnet).

use super::checked_len;
use std::ops::Range;

use super::{Limits, RespError, bulk_end, decimal};

/// The smallest multibulk argument, `$0\r\n\r\n`, in bytes: bounds the argument vector by the
/// bytes present rather than the count declared.
const BULK_ARG_BYTES_MIN: usize = 6;

/// What the front of a read buffer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The buffer ends inside a command. Nothing is consumed: read more bytes and parse again
    /// from the same start.
    Incomplete,
    /// An empty command, which redis skips: `*0\r\n`, `*-1\r\n`, or an inline line holding only
    /// blanks. Drop `consumed` bytes and parse again.
    Skip {
        /// Bytes to drop from the front of the buffer.
        consumed: usize,
    },
    /// A command with at least one argument.
    Command(Command),
}

/// One command: its arguments, and how many bytes of the buffer it took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The arguments, the command name first; never empty.
    pub args: Vec<Arg>,
    /// Bytes the command took from the front of the buffer, its line endings included.
    pub consumed: usize,
}

impl Command {
    /// The arguments' bytes. `buf` is the buffer the command was parsed from, from the same
    /// start (see [`Arg::bytes`]).
    pub fn args<'a>(&'a self, buf: &'a [u8]) -> impl ExactSizeIterator<Item = &'a [u8]> + 'a {
        self.args.iter().map(move |arg| arg.bytes(buf))
    }
}

/// One argument of a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// The argument is `buf[range]`, without copying: every multibulk argument, and inline
    /// words without quotes.
    Span(Range<usize>),
    /// An inline argument written with quotes, unescaped into its own bytes.
    Unquoted(Vec<u8>),
}

impl Arg {
    /// The argument's bytes. `buf` is the buffer the command was parsed from, from the same
    /// start; given another buffer, a span reads whatever lies there (empty when out of range).
    pub fn bytes<'a>(&'a self, buf: &'a [u8]) -> &'a [u8] {
        match self {
            Arg::Span(range) => buf.get(range.clone()).unwrap_or_default(),
            Arg::Unquoted(bytes) => bytes,
        }
    }
}

/// Parses the command at the front of `buf`.
///
/// A buffer starting with `*` holds a multibulk command; anything else is an inline command,
/// as in redis. Arguments are binary-safe in a multibulk command: any bytes, `\r\n` and NUL
/// included. A pipelined buffer holds several commands: parse one, advance by its `consumed`
/// (or a [`Parsed::Skip`]'s), parse the next, until [`Parsed::Incomplete`].
///
/// Inline commands follow redis's `sdssplitargs`, with one difference: a line is split on
/// blanks (space, `\t`, `\r`, `\n`, `\x0b`, `\x0c`) into words; a word may contain one quoted
/// part, `"..."` with the escapes `\n \r \t \b \a \xHH`, and `\c` for any other `c`, or
/// `'...'` with only `\'`; a closing quote must be followed by a blank or the end of the line.
/// The difference: NUL is an ordinary byte here, where redis ends the line at it. The line
/// ends at `\n`, and a `\r` before it is dropped.
///
/// The numbers in a multibulk command must be canonical decimals, as redis's `string2ll`
/// wants. Stricter than redis: a count below -1 is refused (redis skips it like `*0`), and the
/// bytes after bulk data must be `\r\n` (redis skips two bytes unread).
pub fn parse_command(buf: &[u8], limits: &Limits) -> Result<Parsed, RespError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'*') => multibulk(buf, limits),
        Some(_) => inline(buf, limits),
    }
}

fn multibulk(buf: &[u8], limits: &Limits) -> Result<Parsed, RespError> {
    let Some((count, mut at)) = decimal(buf, 1).map_err(|()| RespError::InvalidMultibulkLength)?
    else {
        return Ok(Parsed::Incomplete);
    };
    if count == -1 || count == 0 {
        return Ok(Parsed::Skip { consumed: at });
    }
    let Ok(count) = u64::try_from(count) else {
        return Err(RespError::InvalidMultibulkLength);
    };
    let count = match usize::try_from(count) {
        Ok(count) if count <= limits.array_len_max => count,
        _ => {
            return Err(RespError::ArrayTooLong {
                len: count,
                max: limits.array_len_max,
            });
        }
    };
    let present = (buf.len() - at) / BULK_ARG_BYTES_MIN;
    let mut args = Vec::with_capacity(count.min(present));
    for _ in 0..count {
        match buf.get(at) {
            None => return Ok(Parsed::Incomplete),
            Some(b'$') => {}
            Some(&got) => return Err(RespError::ExpectedBulk { got }),
        }
        let Some((len, start)) = decimal(buf, at + 1).map_err(|()| RespError::InvalidBulkLength)?
        else {
            return Ok(Parsed::Incomplete);
        };
        let len = checked_len(
            len,
            limits.bulk_bytes_max,
            RespError::InvalidBulkLength,
            |len, max| RespError::BulkTooLong { len, max },
        )?;
        let end = start.saturating_add(len);
        let Some(next) = bulk_end(buf, end)? else {
            return Ok(Parsed::Incomplete);
        };
        args.push(Arg::Span(start..end));
        at = next;
    }
    Ok(Parsed::Command(Command { args, consumed: at }))
}

fn inline(buf: &[u8], limits: &Limits) -> Result<Parsed, RespError> {
    let too_long = RespError::InlineTooLong {
        max: limits.inline_bytes_max,
    };
    // A line within the limit has its `\n` among the first `max + 2` bytes (`\r\n` after it).
    let window = buf
        .get(..limits.inline_bytes_max.saturating_add(2))
        .unwrap_or(buf);
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= limits.inline_bytes_max.saturating_add(2) {
            Err(too_long)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = match &buf[..newline] {
        [line @ .., b'\r'] => line,
        line => line,
    };
    if line.len() > limits.inline_bytes_max {
        return Err(too_long);
    }
    let args = split_args(line)?;
    let consumed = newline + 1;
    Ok(if args.is_empty() {
        Parsed::Skip { consumed }
    } else {
        Parsed::Command(Command { args, consumed })
    })
}

/// The blanks that separate inline words: C's `isspace`.
fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c)
}

/// Splits an inline line into words; a word without quotes is a span of the line, which
/// starts at the buffer's start.
fn split_args(line: &[u8]) -> Result<Vec<Arg>, RespError> {
    let mut args = Vec::new();
    let mut at = 0;
    loop {
        while line.get(at).copied().is_some_and(is_blank) {
            at += 1;
        }
        if at == line.len() {
            return Ok(args);
        }
        let start = at;
        while line
            .get(at)
            .is_some_and(|&b| !is_blank(b) && b != b'"' && b != b'\'')
        {
            at += 1;
        }
        if at < line.len() && !is_blank(line[at]) {
            let (word, next) = quoted_word(line, start, at)?;
            args.push(Arg::Unquoted(word));
            at = next;
        } else {
            args.push(Arg::Span(start..at));
        }
    }
}

/// Reads a word whose quoted part opens at `quote_at`, after the plain bytes
/// `line[start..quote_at]`: the word unescaped, and the position after its closing quote.
fn quoted_word(line: &[u8], start: usize, quote_at: usize) -> Result<(Vec<u8>, usize), RespError> {
    let quote = line[quote_at];
    let mut word = line[start..quote_at].to_vec();
    let mut at = quote_at + 1;
    loop {
        let Some(&b) = line.get(at) else {
            return Err(RespError::UnbalancedQuotes);
        };
        if b == quote {
            if line.get(at + 1).is_some_and(|&next| !is_blank(next)) {
                return Err(RespError::UnbalancedQuotes);
            }
            return Ok((word, at + 1));
        }
        match (quote, b, line.get(at + 1).copied()) {
            (b'"', b'\\', Some(b'x')) => {
                let hex = line.get(at + 2).copied().and_then(hex_digit);
                let low = line.get(at + 3).copied().and_then(hex_digit);
                if let (Some(high), Some(low)) = (hex, low) {
                    word.push((high << 4) | low);
                    at += 4;
                } else {
                    word.push(b'x');
                    at += 2;
                }
            }
            (b'"', b'\\', Some(escaped)) => {
                word.push(match escaped {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => 0x08,
                    b'a' => 0x07,
                    other => other,
                });
                at += 2;
            }
            (b'\'', b'\\', Some(b'\'')) => {
                word.push(b'\'');
                at += 2;
            }
            _ => {
                word.push(b);
                at += 1;
            }
        }
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}
