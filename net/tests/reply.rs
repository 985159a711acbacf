//! Replies: the bytes of every kind, parsing them back, every cut, and every refusal.

use strait_net::resp::REPLY_DEPTH_MAX;
use strait_net::{
    Limits, Reply, RespError, encode_array_header, encode_bulk, encode_command, encode_error,
    encode_integer, encode_null_array, encode_null_bulk, encode_simple, parse_reply,
};

fn bytes(encode: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = b"prefix".to_vec();
    encode(&mut out);
    out.split_off(6)
}

fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, RespError> {
    parse_reply(buf, &Limits::default())
}

fn bulk(b: &[u8]) -> Reply {
    Reply::Bulk(Some(b.to_vec()))
}

#[test]
fn each_kind_encodes_to_its_bytes() {
    assert_eq!(bytes(|o| encode_simple(o, b"OK")), b"+OK\r\n");
    assert_eq!(bytes(|o| encode_simple(o, b"")), b"+\r\n");
    assert_eq!(
        bytes(|o| encode_error(o, b"ERR unknown command")),
        b"-ERR unknown command\r\n"
    );
    assert_eq!(
        bytes(|o| encode_error(o, b"WRONGTYPE no")),
        b"-WRONGTYPE no\r\n"
    );
    assert_eq!(bytes(|o| encode_integer(o, 0)), b":0\r\n");
    assert_eq!(bytes(|o| encode_integer(o, 42)), b":42\r\n");
    assert_eq!(bytes(|o| encode_integer(o, -7)), b":-7\r\n");
    assert_eq!(
        bytes(|o| encode_integer(o, i64::MAX)),
        b":9223372036854775807\r\n"
    );
    assert_eq!(
        bytes(|o| encode_integer(o, i64::MIN)),
        b":-9223372036854775808\r\n"
    );
    assert_eq!(bytes(|o| encode_bulk(o, b"a\r\n\0")), b"$4\r\na\r\n\0\r\n");
    assert_eq!(bytes(|o| encode_bulk(o, b"")), b"$0\r\n\r\n");
    assert_eq!(bytes(|o| encode_bulk(o, &[7; 1234])).len(), 1234 + 9);
    assert_eq!(bytes(encode_null_bulk), b"$-1\r\n");
    assert_eq!(bytes(|o| encode_array_header(o, 0)), b"*0\r\n");
    assert_eq!(bytes(|o| encode_array_header(o, 10)), b"*10\r\n");
    assert_eq!(bytes(encode_null_array), b"*-1\r\n");
    assert_eq!(
        bytes(|o| encode_command(o, &["GET", "k"])),
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    );
}

#[test]
fn reply_values_encode_like_the_functions() {
    let reply = Reply::Array(Some(vec![
        Reply::Simple(b"OK".to_vec()),
        Reply::Error(b"ERR x".to_vec()),
        Reply::Integer(-1),
        bulk(b"v"),
        Reply::Bulk(None),
        Reply::Array(None),
        Reply::Array(Some(vec![])),
    ]));
    assert_eq!(
        bytes(|o| reply.encode(o)),
        b"*7\r\n+OK\r\n-ERR x\r\n:-1\r\n$1\r\nv\r\n$-1\r\n*-1\r\n*0\r\n"
    );
}

#[test]
fn line_breaks_in_simple_strings_and_errors_become_spaces() {
    assert_eq!(bytes(|o| encode_simple(o, b"a\r\nb\rc\n")), b"+a  b c \r\n");
    assert_eq!(
        bytes(|o| encode_error(o, b"ERR bad\r\n")),
        b"-ERR bad  \r\n"
    );
}

#[test]
fn each_kind_parses_back() {
    for (buf, reply) in [
        (&b"+OK\r\n"[..], Reply::Simple(b"OK".to_vec())),
        (b"+\r\n", Reply::Simple(vec![])),
        (b"+a\rb\r\n", Reply::Simple(b"a\rb".to_vec())),
        (b"-ERR no\r\n", Reply::Error(b"ERR no".to_vec())),
        (b":0\r\n", Reply::Integer(0)),
        (b":-9223372036854775808\r\n", Reply::Integer(i64::MIN)),
        (b"$3\r\n\r\n\0\r\n", bulk(b"\r\n\0")),
        (b"$0\r\n\r\n", bulk(b"")),
        (b"$-1\r\n", Reply::Bulk(None)),
        (b"*-1\r\n", Reply::Array(None)),
        (b"*0\r\n", Reply::Array(Some(vec![]))),
        (
            b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n*0\r\n$-1\r\n",
            Reply::Array(Some(vec![
                Reply::Integer(1),
                Reply::Array(Some(vec![bulk(b"a"), Reply::Array(Some(vec![]))])),
                Reply::Bulk(None),
            ])),
        ),
    ] {
        assert_eq!(
            parse(buf),
            Ok(Some((reply, buf.len()))),
            "{}",
            buf.escape_ascii()
        );
    }
}

fn replies() -> Vec<Reply> {
    vec![
        Reply::Simple(b"OK".to_vec()),
        Reply::Array(Some(vec![
            bulk(b"k\r\n"),
            Reply::Array(Some(vec![Reply::Integer(-12), Reply::Bulk(None)])),
            Reply::Array(None),
            Reply::Error(b"ERR e".to_vec()),
        ])),
        Reply::Bulk(None),
        bulk(b"\0\r\n\r\n$1\r\n"),
        Reply::Integer(i64::MAX),
        Reply::Array(Some(vec![])),
    ]
}

#[test]
fn pipelined_replies_parse_one_at_a_time() {
    let mut buf = Vec::new();
    for reply in replies() {
        reply.encode(&mut buf);
    }
    let mut at = 0;
    let mut parsed = Vec::new();
    while let Some((reply, consumed)) = parse(&buf[at..]).unwrap() {
        parsed.push(reply);
        at += consumed;
    }
    assert_eq!((parsed, at), (replies(), buf.len()));
}

#[test]
fn every_cut_of_a_reply_is_incomplete() {
    for reply in replies() {
        let mut buf = Vec::new();
        reply.encode(&mut buf);
        for cut in 0..buf.len() {
            assert_eq!(
                parse(&buf[..cut]),
                Ok(None),
                "{}",
                buf[..cut].escape_ascii()
            );
        }
        // With the next reply's first bytes behind it, the reply is whole.
        let len = buf.len();
        buf.extend_from_slice(b"*2\r\n$");
        assert_eq!(parse(&buf), Ok(Some((reply, len))));
    }
}

#[test]
fn malformed_replies_are_refused() {
    let limits = Limits::default();
    for (buf, error) in [
        (&b"?\r\n"[..], RespError::UnknownReplyType { got: b'?' }),
        (b"%1\r\n", RespError::UnknownReplyType { got: b'%' }),
        (b"*1\r\n_\r\n", RespError::UnknownReplyType { got: b'_' }),
        (b":abc\r\n", RespError::InvalidInteger),
        (b":1.5\r\n", RespError::InvalidInteger),
        (b":9223372036854775808\r\n", RespError::InvalidInteger),
        (b":\r\n", RespError::InvalidInteger),
        (b":1\rx", RespError::InvalidInteger),
        (b"$-2\r\n", RespError::InvalidBulkLength),
        (b"$x\r\n", RespError::InvalidBulkLength),
        (b"$1\r\nab\r\n", RespError::MissingBulkEnd),
        (b"*-2\r\n", RespError::InvalidMultibulkLength),
        (b"*1x\r\n", RespError::InvalidMultibulkLength),
        (b"*2\r\n:1\r\n:x\r\n", RespError::InvalidInteger),
    ] {
        assert_eq!(
            parse_reply(buf, &limits),
            Err(error),
            "{}",
            buf.escape_ascii()
        );
    }
}

#[test]
fn reply_sizes_over_the_limits_are_refused() {
    let limits = Limits {
        bulk_bytes_max: 3,
        array_len_max: 2,
        inline_bytes_max: 4,
    };
    assert_eq!(
        parse_reply(b"$4\r\n", &limits),
        Err(RespError::BulkTooLong { len: 4, max: 3 })
    );
    assert_eq!(
        parse_reply(b"*3\r\n", &limits),
        Err(RespError::ArrayTooLong { len: 3, max: 2 })
    );
    assert_eq!(
        parse_reply(b"+abcd\r\n", &limits),
        Ok(Some((Reply::Simple(b"abcd".to_vec()), 7)))
    );
    assert_eq!(parse_reply(b"+abcd\r", &limits), Ok(None));
    let too_long = Err(RespError::ReplyLineTooLong { max: 4 });
    assert_eq!(parse_reply(b"+abcde\r\n", &limits), too_long);
    assert_eq!(parse_reply(b"-abcdef", &limits), too_long);
    // A huge declared bulk under the limit waits for its bytes.
    assert_eq!(parse(b"$536870912\r\nab"), Ok(None));
}

#[test]
fn arrays_nest_to_the_depth_limit() {
    let nested = |depth: usize| {
        let mut reply = Reply::Integer(1);
        for _ in 0..depth {
            reply = Reply::Array(Some(vec![reply]));
        }
        let mut buf = Vec::new();
        reply.encode(&mut buf);
        (reply, buf)
    };
    let (reply, buf) = nested(REPLY_DEPTH_MAX);
    assert_eq!(parse(&buf), Ok(Some((reply, buf.len()))));
    let (_, buf) = nested(REPLY_DEPTH_MAX + 1);
    assert_eq!(
        parse(&buf),
        Err(RespError::ReplyTooDeep {
            max: REPLY_DEPTH_MAX
        })
    );
    // Refused as soon as the too-deep array starts.
    assert_eq!(
        parse(&buf[..REPLY_DEPTH_MAX * 4 + 1]),
        Err(RespError::ReplyTooDeep {
            max: REPLY_DEPTH_MAX
        })
    );
}

#[test]
fn resp3_map_headers_and_nulls_encode() {
    let mut out = Vec::new();
    strait_net::resp::encode_map_header(&mut out, 2);
    strait_net::resp::encode_null3(&mut out);
    assert_eq!(out, b"%2\r\n_\r\n");
}
