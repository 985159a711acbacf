//! RESP2, the Redis protocol: requests a server reads, replies it writes, and a reply parser
//! for clients and tests.
//!
//! Every function here is pure: it reads a byte slice or appends to a `Vec<u8>`, keeps no state
//! between calls and does no I/O. A parser looks at the front of a buffer and either finds a
//! whole item, says the buffer ends inside one (nothing consumed, read more and call again from
//! the same start), or refuses the bytes with a [`RespError`].
//!
//! After any [`RespError`] from [`parse_command`] the server sends the error's reply
//! ([`RespError::encode_reply`]) and closes the connection, as redis does: the stream has lost
//! its framing and nothing after the bad bytes can be trusted.
//!
//! Sizes a peer declares are checked against [`Limits`] before anything else happens, and no
//! parser allocates for a declared size: request arguments are ranges into the caller's buffer,
//! and a bulk string is only looked at once all its bytes are in the buffer.

mod reply;
mod request;

pub use reply::{
    Reply, encode_array_header, encode_bulk, encode_command, encode_error, encode_integer,
    encode_map_header, encode_null_array, encode_null_bulk, encode_null3, encode_simple,
    parse_reply,
};
pub use request::{Arg, Command, Parsed, parse_command};

/// Default of [`Limits::bulk_bytes_max`]: 512 MiB, redis's `proto-max-bulk-len`.
pub const BULK_BYTES_MAX_DEFAULT: usize = 512 << 20;
/// Default of [`Limits::array_len_max`]: 1024 × 1024 elements, redis's multibulk request limit.
pub const ARRAY_LEN_MAX_DEFAULT: usize = 1 << 20;
/// Default of [`Limits::inline_bytes_max`]: 64 KiB, redis's `PROTO_INLINE_MAX_SIZE`.
pub const INLINE_BYTES_MAX_DEFAULT: usize = 64 << 10;
/// Deepest nesting of arrays [`parse_reply`] accepts: a top-level array is depth 1. Redis
/// replies nest a few levels (`XREAD` 4, `CLUSTER SLOTS` 3); the bound keeps the recursive
/// parser's stack small.
pub const REPLY_DEPTH_MAX: usize = 32;
/// Longest decimal number on a header line, in bytes: `-9223372036854775808`. A longer line
/// is refused without waiting for its `\r`.
const DECIMAL_BYTES_MAX: usize = 20;

/// Every size a peer can declare. The defaults match redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string, in bytes: a request argument, or a bulk reply in [`parse_reply`].
    /// Default [`BULK_BYTES_MAX_DEFAULT`], 512 MiB.
    pub bulk_bytes_max: usize,
    /// Most elements of an array: a multibulk request's arguments, or a reply array in
    /// [`parse_reply`]. Default [`ARRAY_LEN_MAX_DEFAULT`], 1 Mi elements.
    pub array_len_max: usize,
    /// Longest inline command line, in bytes, not counting its `\r\n` or `\n`; in
    /// [`parse_reply`], the longest simple-string or error line. Default
    /// [`INLINE_BYTES_MAX_DEFAULT`], 64 KiB.
    pub inline_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            bulk_bytes_max: BULK_BYTES_MAX_DEFAULT,
            array_len_max: ARRAY_LEN_MAX_DEFAULT,
            inline_bytes_max: INLINE_BYTES_MAX_DEFAULT,
        }
    }
}

/// Why a peer's bytes were refused. Both kinds are the peer's fault: the first group is
/// garbage (bytes no correct peer sends), the second is a well-formed size over a [`Limits`]
/// value ([`RespError::is_over_limit`]).
///
/// The text (`Display`) is the redis error message; the server replies with
/// `-ERR <text>` ([`RespError::encode_reply`]) and closes the connection. Over-limit errors
/// share redis's text with the matching garbage error (redis does not tell them apart); the
/// variant tells them apart for logs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// A multibulk count that is not a canonical decimal (`*abc`, `*01`, `*+1`, overflow), is
    /// below -1, or whose line does not end in `\r\n`.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// A bulk length that is not a canonical decimal, is negative in a request (`$-1` is only a
    /// reply), is below -1 in a reply, or whose line does not end in `\r\n`.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// A multibulk request element that does not start with `$`.
    #[error("Protocol error: expected '$', got '{}'", .got.escape_ascii())]
    ExpectedBulk {
        /// The byte found instead.
        got: u8,
    },
    /// Bulk data not followed by `\r\n`: the declared length is wrong.
    #[error("Protocol error: expected '\\r\\n' after bulk data")]
    MissingBulkEnd,
    /// An inline command with an unterminated quote, or a closing quote followed by something
    /// other than a blank.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A reply starting with a byte that is not a RESP2 type (`+ - : $ *`).
    #[error("Protocol error: unknown reply type '{}'", .got.escape_ascii())]
    UnknownReplyType {
        /// The byte found.
        got: u8,
    },
    /// An integer reply that is not a canonical 64-bit decimal, or whose line does not end in
    /// `\r\n`.
    #[error("Protocol error: invalid integer reply")]
    InvalidInteger,

    /// An array declares more elements than [`Limits::array_len_max`].
    #[error("Protocol error: invalid multibulk length")]
    ArrayTooLong {
        /// The declared element count.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A bulk string declares more bytes than [`Limits::bulk_bytes_max`].
    #[error("Protocol error: invalid bulk length")]
    BulkTooLong {
        /// The declared length, in bytes.
        len: u64,
        /// The limit, in bytes.
        max: usize,
    },
    /// An inline command line longer than [`Limits::inline_bytes_max`].
    #[error("Protocol error: too big inline request")]
    InlineTooLong {
        /// The limit, in bytes.
        max: usize,
    },
    /// A simple-string or error reply line longer than [`Limits::inline_bytes_max`].
    #[error("Protocol error: too big reply line")]
    ReplyLineTooLong {
        /// The limit, in bytes.
        max: usize,
    },
    /// Reply arrays nested deeper than [`REPLY_DEPTH_MAX`].
    #[error("Protocol error: reply arrays nested deeper than {max}")]
    ReplyTooDeep {
        /// The limit, in levels.
        max: usize,
    },
}

impl RespError {
    /// True when the peer declared a well-formed size over a limit, false when it sent garbage.
    pub fn is_over_limit(&self) -> bool {
        matches!(
            self,
            RespError::ArrayTooLong { .. }
                | RespError::BulkTooLong { .. }
                | RespError::InlineTooLong { .. }
                | RespError::ReplyLineTooLong { .. }
                | RespError::ReplyTooDeep { .. }
        )
    }

    /// Appends the error reply a server sends before closing: `-ERR <text>\r\n`.
    pub fn encode_reply(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"-ERR ");
        out.extend_from_slice(self.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads the decimal number that starts at `at` and ends in `\r\n`: the number and the
/// position after the `\r\n`, or `None` when the buffer ends first. `Err` when the line is not
/// a canonical decimal ending in `\r\n`, or runs past [`DECIMAL_BYTES_MAX`] without a `\r`.
fn decimal(buf: &[u8], at: usize) -> Result<Option<(i64, usize)>, ()> {
    let rest = buf.get(at..).unwrap_or_default();
    let window = rest.get(..=DECIMAL_BYTES_MAX).unwrap_or(rest);
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if window.len() > DECIMAL_BYTES_MAX {
            Err(())
        } else {
            Ok(None)
        };
    };
    match rest.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => match canonical_i64(&rest[..cr]) {
            Some(n) => Ok(Some((n, at + cr + 2))),
            None => Err(()),
        },
        Some(_) => Err(()),
    }
}

/// Parses a decimal the way redis's `string2ll` does: an optional `-`, then `0` or digits
/// without a leading zero; no `+`, no blanks, no `-0`, no overflow.
fn canonical_i64(digits: &[u8]) -> Option<i64> {
    let (negative, rest) = match digits {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, digits),
    };
    match rest {
        [b'0'] if !negative => return Some(0),
        [b'1'..=b'9', ..] => {}
        _ => return None,
    }
    let mut n: i64 = 0;
    for &d in rest {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        n = n.checked_mul(10)?;
        n = if negative {
            n.checked_sub(d)?
        } else {
            n.checked_add(d)?
        };
    }
    Some(n)
}

/// Checks for the `\r\n` that ends bulk data at `at`: the position after it, or `None` when
/// the buffer ends first.
fn bulk_end(buf: &[u8], at: usize) -> Result<Option<usize>, RespError> {
    match buf.get(at..).unwrap_or_default() {
        [] | [b'\r'] => Ok(None),
        [b'\r', b'\n', ..] => Ok(Some(at + 2)),
        _ => Err(RespError::MissingBulkEnd),
    }
}

/// A declared length, checked: negative is `invalid`, over `max` is `too_long(len, max)`.
pub(crate) fn checked_len(
    len: i64,
    max: usize,
    invalid: RespError,
    too_long: fn(u64, usize) -> RespError,
) -> Result<usize, RespError> {
    let Ok(len) = u64::try_from(len) else {
        return Err(invalid);
    };
    match usize::try_from(len) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(too_long(len, max)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_decimals() {
        assert_eq!(canonical_i64(b"0"), Some(0));
        assert_eq!(canonical_i64(b"-1"), Some(-1));
        assert_eq!(canonical_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(canonical_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"00",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"1a",
            b"9223372036854775808",
            b"-9223372036854775809",
        ] {
            assert_eq!(canonical_i64(bad), None, "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn decimal_lines() {
        assert_eq!(decimal(b"*12\r\n", 1), Ok(Some((12, 5))));
        assert_eq!(decimal(b"*12\r", 1), Ok(None));
        assert_eq!(decimal(b"*12", 1), Ok(None));
        assert_eq!(decimal(b"*", 1), Ok(None));
        assert_eq!(decimal(b"*12\rx", 1), Err(()));
        assert_eq!(decimal(b"*\r\n", 1), Err(()));
        let long = [b'1'; DECIMAL_BYTES_MAX + 1];
        assert_eq!(decimal(&long, 0), Err(()));
        assert_eq!(decimal(&long[..DECIMAL_BYTES_MAX], 0), Ok(None));
    }
}
