//! Requests: both forms, pipelining, every cut of a valid buffer, and every refusal.

mod common;

use common::{Drained, drain};
use strait_net::resp::{ARRAY_LEN_MAX_DEFAULT, BULK_BYTES_MAX_DEFAULT, INLINE_BYTES_MAX_DEFAULT};
use strait_net::{Arg, Command, Limits, Parsed, RespError, encode_command, parse_command};

/// Arguments written as string literals.
fn args(words: &[&[u8]]) -> Vec<Vec<u8>> {
    words.iter().map(|w| w.to_vec()).collect()
}

fn parse(buf: &[u8]) -> Result<Parsed, RespError> {
    parse_command(buf, &Limits::default())
}

/// The only command in `buf`, which it fills exactly.
fn one(buf: &[u8]) -> Vec<Vec<u8>> {
    match parse(buf) {
        Ok(Parsed::Command(cmd)) => {
            assert_eq!(cmd.consumed, buf.len(), "{}", buf.escape_ascii());
            cmd.args(buf).map(<[u8]>::to_vec).collect()
        }
        other => panic!("{}: {other:?}", buf.escape_ascii()),
    }
}

fn error(buf: &[u8], limits: &Limits) -> RespError {
    match parse_command(buf, limits) {
        Err(e) => e,
        other => panic!("{}: {other:?}", buf.escape_ascii()),
    }
}

#[test]
fn limits_default_to_redis() {
    let limits = Limits::default();
    assert_eq!(limits.bulk_bytes_max, 512 * 1024 * 1024);
    assert_eq!(limits.array_len_max, 1024 * 1024);
    assert_eq!(limits.inline_bytes_max, 64 * 1024);
    assert_eq!(
        (
            BULK_BYTES_MAX_DEFAULT,
            ARRAY_LEN_MAX_DEFAULT,
            INLINE_BYTES_MAX_DEFAULT
        ),
        (
            limits.bulk_bytes_max,
            limits.array_len_max,
            limits.inline_bytes_max
        )
    );
}

#[test]
fn multibulk_args_are_spans_of_the_buffer() {
    let buf = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n";
    assert_eq!(
        parse(buf),
        Ok(Parsed::Command(Command {
            args: vec![Arg::Span(8..11), Arg::Span(17..18), Arg::Span(24..24)],
            consumed: buf.len(),
        }))
    );
    assert_eq!(one(buf), args(&[b"SET", b"k", b""]));
}

#[test]
fn multibulk_args_are_binary_safe() {
    let key = b"a\r\nb\0c\r\n*1\r\n$";
    let value = [0u8, 255, b'\r', b'\n', b'\r', 0];
    let mut buf = Vec::new();
    encode_command(&mut buf, &[&b"SET"[..], key, &value]);
    assert_eq!(one(&buf), args(&[b"SET", key, &value]));
}

#[test]
fn inline_words_split_on_blanks() {
    assert_eq!(one(b"PING\r\n"), args(&[b"PING"]));
    assert_eq!(one(b"PING\n"), args(&[b"PING"]));
    assert_eq!(one(b"SET k v\r\n"), args(&[b"SET", b"k", b"v"]));
    assert_eq!(
        one(b"  SET\t\tk \x0b v\x0c \r\n"),
        args(&[b"SET", b"k", b"v"])
    );
    assert_eq!(one(b"SET a\rb\r\n"), args(&[b"SET", b"a", b"b"]));
    // NUL is an ordinary byte; `$` starts an inline word, not a multibulk element.
    assert_eq!(one(b"GET a\0b\r\n"), args(&[b"GET", b"a\0b"]));
    assert_eq!(one(b"$3 x\n"), args(&[b"$3", b"x"]));
    // Plain words are spans, quoted ones their own bytes.
    assert_eq!(
        parse(b"GET \"k\"\r\n"),
        Ok(Parsed::Command(Command {
            args: vec![Arg::Span(0..3), Arg::Unquoted(b"k".to_vec())],
            consumed: 9,
        }))
    );
}

#[test]
fn inline_double_quotes_unescape() {
    assert_eq!(one(b"SET \"a b\" \"\"\r\n"), args(&[b"SET", b"a b", b""]));
    assert_eq!(
        one(b"SET \"\\n\\r\\t\\b\\a\\\"\\\\\\q\"\r\n"),
        args(&[b"SET", b"\n\r\t\x08\x07\"\\q"])
    );
    assert_eq!(
        one(b"SET \"\\x00\\xfF\\x41\"\r\n"),
        args(&[b"SET", b"\0\xffA"])
    );
    // `\x` without two hex digits is `x`, as in redis.
    assert_eq!(one(b"SET \"\\xg1\\x4\"\r\n"), args(&[b"SET", b"xg1x4"]));
    // A quoted part may follow plain bytes of the same word.
    assert_eq!(one(b"SET k\"e y\" v\r\n"), args(&[b"SET", b"ke y", b"v"]));
    assert_eq!(one(b"SET \"k\"\tv\r\n"), args(&[b"SET", b"k", b"v"]));
}

#[test]
fn inline_single_quotes_keep_backslashes() {
    assert_eq!(
        one(b"SET 'a \\n \"b' '\\''\r\n"),
        args(&[b"SET", b"a \\n \"b", b"'"])
    );
    assert_eq!(one(b"SET k'v'\r\n"), args(&[b"SET", b"kv"]));
}

#[test]
fn empty_commands_are_skipped() {
    for (buf, consumed) in [
        (&b"*0\r\n"[..], 4),
        (b"*-1\r\n", 5),
        (b"\r\n", 2),
        (b"\n", 1),
        (b" \t \r\n", 5),
        (b"*0\r\nPING\r\n", 4),
    ] {
        assert_eq!(
            parse(buf),
            Ok(Parsed::Skip { consumed }),
            "{}",
            buf.escape_ascii()
        );
    }
}

#[test]
fn incomplete_buffers_consume_nothing() {
    for buf in [
        &b""[..],
        b"*",
        b"*1",
        b"*1\r",
        b"*1\r\n",
        b"*1\r\n$",
        b"*1\r\n$3\r\nab",
        b"*1\r\n$3\r\nabc",
        b"*1\r\n$3\r\nabc\r",
        b"PING",
        b"PING\r",
        b"SET \"unterminated",
    ] {
        assert_eq!(parse(buf), Ok(Parsed::Incomplete), "{}", buf.escape_ascii());
    }
}

#[test]
fn a_huge_declared_bulk_waits_for_its_bytes() {
    // Under the limit: the parser waits; arguments are spans, so nothing is sized by the
    // declared length.
    assert_eq!(parse(b"*1\r\n$536870912\r\nab"), Ok(Parsed::Incomplete));
    assert_eq!(parse(b"*1048576\r\n$1\r\na\r\n"), Ok(Parsed::Incomplete));
    // Over it: refused at once.
    assert_eq!(
        parse(b"*1\r\n$1000000000\r\n"),
        Err(RespError::BulkTooLong {
            len: 1_000_000_000,
            max: BULK_BYTES_MAX_DEFAULT
        })
    );
}

fn pipeline() -> (Vec<u8>, Vec<Vec<Vec<u8>>>) {
    let mut buf = Vec::new();
    let mut commands = Vec::new();
    let mut push_multibulk = |buf: &mut Vec<u8>, words: &[&[u8]]| {
        encode_command(buf, words);
        commands.push(args(words));
    };
    push_multibulk(&mut buf, &[b"SET", b"k\r\n\0", b"v"]);
    buf.extend_from_slice(b"*0\r\n");
    buf.extend_from_slice(b"GET  \"k\\r\\n\\x00\"\r\n");
    buf.extend_from_slice(b"\r\n");
    push_multibulk(&mut buf, &[b"PING"]);
    buf.extend_from_slice(b"*-1\r\n");
    push_multibulk(&mut buf, &[b"MSET", b"a", b"", b"b", b"*1\r\n$1\r\nx\r\n"]);
    buf.extend_from_slice(b"ECHO 'hi there'\n");
    let mut expected = commands.clone();
    expected.insert(1, args(&[b"GET", b"k\r\n\0"]));
    expected.push(args(&[b"ECHO", b"hi there"]));
    (buf, expected)
}

#[test]
fn a_pipeline_parses_one_command_at_a_time() {
    let (buf, expected) = pipeline();
    assert_eq!(
        drain(&buf, &Limits::default()),
        Drained {
            commands: expected,
            consumed: buf.len(),
            error: None
        }
    );
}

#[test]
fn every_cut_of_a_pipeline_gives_the_whole_commands_before_it() {
    let (buf, expected) = pipeline();
    let full = drain(&buf, &Limits::default());
    let mut ends = Vec::new(); // where each whole command or skip ends
    let mut at = 0;
    while at < buf.len() {
        at += match parse(&buf[at..]) {
            Ok(Parsed::Skip { consumed }) => consumed,
            Ok(Parsed::Command(cmd)) => cmd.consumed,
            other => panic!("{other:?}"),
        };
        ends.push(at);
    }
    assert_eq!(full.consumed, buf.len());
    for cut in 0..=buf.len() {
        let drained = drain(&buf[..cut], &Limits::default());
        assert_eq!(drained.error, None, "cut at {cut}");
        let consumed = ends
            .iter()
            .copied()
            .filter(|&end| end <= cut)
            .max()
            .unwrap_or(0);
        assert_eq!(drained.consumed, consumed, "cut at {cut}");
        assert_eq!(
            drained.commands[..],
            expected[..drained.commands.len()],
            "cut at {cut}"
        );
    }
    assert_eq!(expected.len(), 5);
}

#[test]
fn invalid_multibulk_lengths() {
    let limits = Limits::default();
    for buf in [
        &b"*abc\r\n"[..],
        b"*-2\r\n",
        b"*01\r\n",
        b"*+1\r\n",
        b"*-0\r\n",
        b"* 1\r\n",
        b"*\r\n",
        b"*1\rx",
        b"*1\n$1\r\na\r\n",
        b"*99999999999999999999\r\n",
        b"*123456789012345678901", // no `\r` within 20 digits: refused before it arrives
    ] {
        assert_eq!(
            error(buf, &limits),
            RespError::InvalidMultibulkLength,
            "{}",
            buf.escape_ascii()
        );
    }
}

#[test]
fn invalid_bulk_lengths() {
    let limits = Limits::default();
    for buf in [
        &b"*1\r\n$-1\r\n"[..],
        b"*1\r\n$-5\r\n",
        b"*1\r\n$x\r\n",
        b"*1\r\n$01\r\n",
        b"*1\r\n$+1\r\n",
        b"*1\r\n$\r\n",
        b"*1\r\n$1\rx",
        b"*1\r\n$99999999999999999999\r\n",
        b"*1\r\n$-99999999999999999999\r\n",
    ] {
        assert_eq!(
            error(buf, &limits),
            RespError::InvalidBulkLength,
            "{}",
            buf.escape_ascii()
        );
    }
}

#[test]
fn elements_must_be_bulk_strings() {
    let limits = Limits::default();
    assert_eq!(
        error(b"*3\r\n$1\r\na\r\nxyz", &limits),
        RespError::ExpectedBulk { got: b'x' }
    );
    assert_eq!(
        error(b"*1\r\n:1\r\n", &limits),
        RespError::ExpectedBulk { got: b':' }
    );
    assert_eq!(
        error(b"*2\r\n$1\r\na\r\n\r\n", &limits),
        RespError::ExpectedBulk { got: b'\r' }
    );
}

#[test]
fn bulk_data_must_end_in_crlf() {
    let limits = Limits::default();
    for buf in [
        &b"*1\r\n$1\r\nab\r\n"[..],
        b"*1\r\n$1\r\na\n",
        b"*1\r\n$1\r\na\rx",
        b"*1\r\n$0\r\nx",
    ] {
        assert_eq!(
            error(buf, &limits),
            RespError::MissingBulkEnd,
            "{}",
            buf.escape_ascii()
        );
    }
}

#[test]
fn sizes_over_the_limits_are_refused() {
    let limits = Limits {
        bulk_bytes_max: 3,
        array_len_max: 2,
        inline_bytes_max: 8,
    };
    assert_eq!(
        drain(b"*2\r\n$3\r\nabc\r\n$0\r\n\r\n", &limits).commands,
        [args(&[b"abc", b""])]
    );
    assert_eq!(
        error(b"*2\r\n$4\r\n", &limits),
        RespError::BulkTooLong { len: 4, max: 3 }
    );
    assert_eq!(
        error(b"*3\r\n", &limits),
        RespError::ArrayTooLong { len: 3, max: 2 }
    );
    assert_eq!(
        error(b"*9223372036854775807\r\n", &limits),
        RespError::ArrayTooLong {
            len: i64::MAX as u64,
            max: 2
        }
    );

    // Inline: eight bytes fit, with either line ending; the ninth is refused whether or not
    // its newline has arrived.
    let fits = |buf: &[u8]| match parse_command(buf, &limits) {
        Ok(Parsed::Command(cmd)) => cmd.consumed == buf.len(),
        _ => false,
    };
    assert!(fits(b"SET k vv\r\n"));
    assert!(fits(b"SET k vv\n"));
    assert_eq!(
        parse_command(b"SET k vv\r", &limits),
        Ok(Parsed::Incomplete)
    );
    let too_long = RespError::InlineTooLong { max: 8 };
    assert_eq!(error(b"SET k vvv\r\n", &limits), too_long);
    assert_eq!(error(b"SET k vvv\n", &limits), too_long);
    assert_eq!(error(b"SET k vvv\r\r", &limits), too_long);
    assert_eq!(error(b"SET k vvvvv", &limits), too_long);
}

#[test]
fn an_inline_line_over_64_kib_is_refused() {
    let limits = Limits::default();
    let mut buf = vec![b'a'; INLINE_BYTES_MAX_DEFAULT];
    buf.extend_from_slice(b"\r");
    assert_eq!(parse_command(&buf, &limits), Ok(Parsed::Incomplete));
    buf.push(b'\n');
    assert!(matches!(
        parse_command(&buf, &limits),
        Ok(Parsed::Command(_))
    ));
    buf.insert(0, b'a');
    assert_eq!(
        error(&buf, &limits),
        RespError::InlineTooLong {
            max: INLINE_BYTES_MAX_DEFAULT
        }
    );
    buf.truncate(INLINE_BYTES_MAX_DEFAULT + 2);
    assert_eq!(
        error(&buf, &limits),
        RespError::InlineTooLong {
            max: INLINE_BYTES_MAX_DEFAULT
        }
    );
}

#[test]
fn unbalanced_quotes_are_refused() {
    let limits = Limits::default();
    for buf in [
        &b"SET \"abc\r\n"[..],
        b"SET 'abc\r\n",
        b"SET \"a\"b\r\n",
        b"SET 'a'b\r\n",
        b"SET \"a\\\"\r\n",
        b"SET \"a\\\r\n",
        b"SET \"\"\"\r\n",
    ] {
        assert_eq!(
            error(buf, &limits),
            RespError::UnbalancedQuotes,
            "{}",
            buf.escape_ascii()
        );
    }
}

#[test]
fn errors_carry_redis_text_and_say_whose_fault() {
    let cases = [
        (
            RespError::InvalidMultibulkLength,
            "Protocol error: invalid multibulk length",
            false,
        ),
        (
            RespError::InvalidBulkLength,
            "Protocol error: invalid bulk length",
            false,
        ),
        (
            RespError::ExpectedBulk { got: b'x' },
            "Protocol error: expected '$', got 'x'",
            false,
        ),
        (
            RespError::ExpectedBulk { got: b'\n' },
            "Protocol error: expected '$', got '\\n'",
            false,
        ),
        (
            RespError::MissingBulkEnd,
            "Protocol error: expected '\\r\\n' after bulk data",
            false,
        ),
        (
            RespError::UnbalancedQuotes,
            "Protocol error: unbalanced quotes in request",
            false,
        ),
        (
            RespError::UnknownReplyType { got: 0 },
            "Protocol error: unknown reply type '\\x00'",
            false,
        ),
        (
            RespError::InvalidInteger,
            "Protocol error: invalid integer reply",
            false,
        ),
        (
            RespError::ArrayTooLong { len: 9, max: 1 },
            "Protocol error: invalid multibulk length",
            true,
        ),
        (
            RespError::BulkTooLong { len: 9, max: 1 },
            "Protocol error: invalid bulk length",
            true,
        ),
        (
            RespError::InlineTooLong { max: 1 },
            "Protocol error: too big inline request",
            true,
        ),
        (
            RespError::ReplyLineTooLong { max: 1 },
            "Protocol error: too big reply line",
            true,
        ),
        (
            RespError::ReplyTooDeep { max: 32 },
            "Protocol error: reply arrays nested deeper than 32",
            true,
        ),
    ];
    for (error, text, over_limit) in cases {
        assert_eq!(error.to_string(), text);
        assert_eq!(error.is_over_limit(), over_limit, "{error:?}");
        let mut out = Vec::new();
        error.encode_reply(&mut out);
        assert_eq!(out, format!("-ERR {text}\r\n").into_bytes());
    }
}
