//! Replies: encoding as a server writes them, and parsing as a client (the load generator, the
//! tests) reads them.

use super::checked_len;
use super::{Limits, REPLY_DEPTH_MAX, RespError, bulk_end, decimal};

/// The smallest reply, `+\r\n`, in bytes: bounds an array's element vector by the bytes
/// present rather than the count declared.
const REPLY_BYTES_MIN: usize = 3;

/// One RESP2 reply, owning its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+<line>\r\n`, e.g. `+OK`.
    Simple(Vec<u8>),
    /// `-<line>\r\n`: the line starts with the error code, e.g. `ERR unknown command`.
    Error(Vec<u8>),
    /// `:<n>\r\n`.
    Integer(i64),
    /// `$<len>\r\n<bytes>\r\n`; `None` is the null bulk string `$-1\r\n`.
    Bulk(Option<Vec<u8>>),
    /// `*<n>\r\n` and `n` replies; `None` is the null array `*-1\r\n`.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// Appends the reply's encoding to `out`. A `\r` or `\n` inside a simple string or an
    /// error line is written as a space, so the reply stays one line.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(line) => encode_simple(out, line),
            Reply::Error(line) => encode_error(out, line),
            Reply::Integer(n) => encode_integer(out, *n),
            Reply::Bulk(Some(bytes)) => encode_bulk(out, bytes),
            Reply::Bulk(None) => encode_null_bulk(out),
            Reply::Array(Some(items)) => {
                encode_array_header(out, items.len());
                for item in items {
                    item.encode(out);
                }
            }
            Reply::Array(None) => encode_null_array(out),
        }
    }
}

/// Appends a simple string, `+<line>\r\n`; a `\r` or `\n` in `line` is written as a space.
pub fn encode_simple(out: &mut Vec<u8>, line: &[u8]) {
    out.push(b'+');
    push_line(out, line);
}

/// Appends an error, `-<line>\r\n`. `line` starts with the error code (`ERR`, `WRONGTYPE`,
/// ...); a `\r` or `\n` in it is written as a space.
pub fn encode_error(out: &mut Vec<u8>, line: &[u8]) {
    out.push(b'-');
    push_line(out, line);
}

/// Appends an integer, `:<n>\r\n`.
pub fn encode_integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    if n < 0 {
        out.push(b'-');
    }
    push_decimal(out, n.unsigned_abs());
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk string, `$<len>\r\n<bytes>\r\n`.
pub fn encode_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'$');
    push_decimal(out, bytes.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// Appends the null bulk string, `$-1\r\n` (a missing key).
pub fn encode_null_bulk(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// Appends an array header, `*<len>\r\n`; the caller appends `len` replies after it.
pub fn encode_array_header(out: &mut Vec<u8>, len: usize) {
    out.push(b'*');
    push_decimal(out, len as u64);
    out.extend_from_slice(b"\r\n");
}

/// Appends the null array, `*-1\r\n`.
pub fn encode_null_array(out: &mut Vec<u8>) {
    out.extend_from_slice(b"*-1\r\n");
}

/// Appends a RESP3 map header (`%<pairs>`) for a client that asked for RESP3 with HELLO 3;
/// `pairs` key–value pairs follow.
pub fn encode_map_header(out: &mut Vec<u8>, pairs: usize) {
    out.push(b'%');
    out.extend_from_slice(pairs.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends the RESP3 null (`_`), which replaces `$-1` and `*-1` for a RESP3 client.
pub fn encode_null3(out: &mut Vec<u8>) {
    out.extend_from_slice(b"_\r\n");
}

/// Appends a command as a client sends it: a multibulk array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    encode_array_header(out, args.len());
    for arg in args {
        encode_bulk(out, arg.as_ref());
    }
}

fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    out.extend(
        line.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal, without allocating.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20]; // u64::MAX has 20 digits
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Parses the reply at the front of `buf`: the reply and the bytes it took, or `None` when the
/// buffer ends inside it (nothing consumed: read more and parse again from the same start).
///
/// Takes the five RESP2 types; RESP3 types are refused as [`RespError::UnknownReplyType`].
/// Sizes are checked against `limits`, arrays may nest [`REPLY_DEPTH_MAX`] deep, and a simple
/// string or error line runs to the first `\r\n`. A reply is copied out only once all of it is
/// in the buffer, so parsing again after `None` costs a scan of the headers, not a copy.
pub fn parse_reply(buf: &[u8], limits: &Limits) -> Result<Option<(Reply, usize)>, RespError> {
    if reply(buf, 0, limits, 0, None)?.is_none() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(1);
    let end = reply(buf, 0, limits, 0, Some(&mut out))?;
    Ok(out.pop().zip(end))
}

/// Reads the reply at `at`, nested in `depth` arrays: the position after it, or `None` when
/// the buffer ends inside it. Pushes the reply to `out` when given one.
fn reply(
    buf: &[u8],
    at: usize,
    limits: &Limits,
    depth: usize,
    out: Option<&mut Vec<Reply>>,
) -> Result<Option<usize>, RespError> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    match kind {
        b'+' | b'-' => {
            let Some((line, next)) = reply_line(buf, at + 1, limits)? else {
                return Ok(None);
            };
            if let Some(out) = out {
                let line = line.to_vec();
                out.push(if kind == b'+' {
                    Reply::Simple(line)
                } else {
                    Reply::Error(line)
                });
            }
            Ok(Some(next))
        }
        b':' => {
            let Some((n, next)) = decimal(buf, at + 1).map_err(|()| RespError::InvalidInteger)?
            else {
                return Ok(None);
            };
            if let Some(out) = out {
                out.push(Reply::Integer(n));
            }
            Ok(Some(next))
        }
        b'$' => bulk(buf, at, limits, out),
        b'*' => array(buf, at, limits, depth, out),
        got => Err(RespError::UnknownReplyType { got }),
    }
}

fn bulk(
    buf: &[u8],
    at: usize,
    limits: &Limits,
    out: Option<&mut Vec<Reply>>,
) -> Result<Option<usize>, RespError> {
    let Some((len, start)) = decimal(buf, at + 1).map_err(|()| RespError::InvalidBulkLength)?
    else {
        return Ok(None);
    };
    if len == -1 {
        if let Some(out) = out {
            out.push(Reply::Bulk(None));
        }
        return Ok(Some(start));
    }
    let len = checked_len(
        len,
        limits.bulk_bytes_max,
        RespError::InvalidBulkLength,
        |len, max| RespError::BulkTooLong { len, max },
    )?;
    let end = start.saturating_add(len);
    let Some(next) = bulk_end(buf, end)? else {
        return Ok(None);
    };
    if let Some(out) = out {
        out.push(Reply::Bulk(Some(buf[start..end].to_vec())));
    }
    Ok(Some(next))
}

fn array(
    buf: &[u8],
    at: usize,
    limits: &Limits,
    depth: usize,
    out: Option<&mut Vec<Reply>>,
) -> Result<Option<usize>, RespError> {
    if depth >= REPLY_DEPTH_MAX {
        return Err(RespError::ReplyTooDeep {
            max: REPLY_DEPTH_MAX,
        });
    }
    let Some((len, mut next)) =
        decimal(buf, at + 1).map_err(|()| RespError::InvalidMultibulkLength)?
    else {
        return Ok(None);
    };
    if len == -1 {
        if let Some(out) = out {
            out.push(Reply::Array(None));
        }
        return Ok(Some(next));
    }
    let len = checked_len(
        len,
        limits.array_len_max,
        RespError::InvalidMultibulkLength,
        |len, max| RespError::ArrayTooLong { len, max },
    )?;
    match out {
        None => {
            for _ in 0..len {
                let Some(after) = reply(buf, next, limits, depth + 1, None)? else {
                    return Ok(None);
                };
                next = after;
            }
        }
        Some(out) => {
            let present = (buf.len() - next) / REPLY_BYTES_MIN;
            let mut items = Vec::with_capacity(len.min(present));
            for _ in 0..len {
                let Some(after) = reply(buf, next, limits, depth + 1, Some(&mut items))? else {
                    return Ok(None);
                };
                next = after;
            }
            out.push(Reply::Array(Some(items)));
        }
    }
    Ok(Some(next))
}

/// Reads a simple-string or error line starting at `at`: the line without its `\r\n`, and the
/// position after it.
fn reply_line<'a>(
    buf: &'a [u8],
    at: usize,
    limits: &Limits,
) -> Result<Option<(&'a [u8], usize)>, RespError> {
    let rest = buf.get(at..).unwrap_or_default();
    // A line within the limit has its `\r\n` among the first `max + 2` bytes.
    let window = rest
        .get(..limits.inline_bytes_max.saturating_add(2))
        .unwrap_or(rest);
    match window.windows(2).position(|pair| pair == b"\r\n") {
        Some(cr) => Ok(Some((&rest[..cr], at + cr + 2))),
        None if rest.len() >= limits.inline_bytes_max.saturating_add(2) => {
            Err(RespError::ReplyLineTooLong {
                max: limits.inline_bytes_max,
            })
        }
        None => Ok(None),
    }
}
