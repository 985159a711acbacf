//! Properties over random input: no input panics, and what is encoded parses back.

mod common;

use common::drain;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use strait_net::{Limits, Reply, encode_command, parse_reply};

/// Bytes that steer the parsers into their interesting branches.
const PROTOCOL_BYTES: &[u8] = b"*$:+-_?\r\n\r\n0123456789-1\"'\\x \tab";

/// Runs of blanks between inline words.
const BLANKS: &[&[u8]] = &[b" ", b"\t", b"  \t"];

/// Random bytes, half of them drawn from [`PROTOCOL_BYTES`].
fn noise() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..300),
        vec(select(PROTOCOL_BYTES), 0..300)
    ]
}

/// Limits small enough for random input to reach them.
fn small_limits() -> Limits {
    Limits {
        bulk_bytes_max: 16,
        array_len_max: 4,
        inline_bytes_max: 24,
    }
}

fn command() -> impl Strategy<Value = Vec<Vec<u8>>> {
    vec(vec(any::<u8>(), 0..40), 1..8)
}

fn line() -> impl Strategy<Value = Vec<u8>> {
    vec(
        any::<u8>().prop_filter("one line", |b| *b != b'\r' && *b != b'\n'),
        0..20,
    )
}

fn reply() -> impl Strategy<Value = Reply> {
    let leaf = prop_oneof![
        line().prop_map(Reply::Simple),
        line().prop_map(Reply::Error),
        any::<i64>().prop_map(Reply::Integer),
        proptest::option::of(vec(any::<u8>(), 0..40)).prop_map(Reply::Bulk),
        Just(Reply::Array(None)),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        vec(inner, 0..8).prop_map(|items| Reply::Array(Some(items)))
    })
}

proptest! {
    #[test]
    fn random_bytes_never_panic(buf in noise()) {
        for limits in [Limits::default(), small_limits()] {
            let drained = drain(&buf, &limits);
            prop_assert!(drained.consumed <= buf.len());
            let mut at = 0;
            while let Ok(Some((_, consumed))) = parse_reply(&buf[at..], &limits) {
                prop_assert!(consumed > 0);
                at += consumed;
            }
        }
    }

    #[test]
    fn damaged_commands_never_panic(
        commands in vec(command(), 1..4),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut buf = Vec::new();
        for args in &commands {
            encode_command(&mut buf, args);
        }
        for (index, byte) in edits {
            let i = index.index(buf.len());
            buf[i] = byte;
        }
        for limits in [Limits::default(), small_limits()] {
            drain(&buf, &limits);
            let _ = parse_reply(&buf, &limits);
        }
    }

    #[test]
    fn multibulk_commands_parse_back(commands in vec(command(), 1..6), cut in any::<prop::sample::Index>()) {
        let mut buf = Vec::new();
        for args in &commands {
            encode_command(&mut buf, args);
        }
        let drained = drain(&buf, &Limits::default());
        prop_assert_eq!(&drained.commands, &commands);
        prop_assert_eq!((drained.consumed, drained.error), (buf.len(), None));

        let cut = cut.index(buf.len() + 1);
        let drained = drain(&buf[..cut], &Limits::default());
        prop_assert_eq!(drained.error, None);
        prop_assert_eq!(&drained.commands[..], &commands[..drained.commands.len()]);
    }

    #[test]
    fn quoted_inline_commands_parse_back(
        args in vec(vec(any::<u8>(), 0..20), 1..6),
        blanks in vec(select(BLANKS), 6),
        single_quoted_ok in any::<bool>(),
    ) {
        // Every byte as `\xHH` inside double quotes; a word without quotes or blanks may also
        // go bare, or in single quotes when it has no `\` (`\'` is an escaped quote).
        let mut buf = Vec::new();
        for (arg, blank) in args.iter().zip(&blanks) {
            buf.extend_from_slice(blank);
            let plain = !arg.is_empty()
                && arg.iter().all(|&b| !b" \t\r\n\x0b\x0c\"'".contains(&b));
            if plain && single_quoted_ok && !arg.contains(&b'\\') {
                buf.push(b'\'');
                buf.extend_from_slice(arg);
                buf.push(b'\'');
            } else if plain {
                buf.extend_from_slice(arg);
            } else {
                buf.push(b'"');
                for b in arg {
                    buf.extend_from_slice(format!("\\x{b:02x}").as_bytes());
                }
                buf.push(b'"');
            }
        }
        buf.extend_from_slice(b"\r\n");
        let drained = drain(&buf, &Limits::default());
        prop_assert_eq!(drained.commands, vec![args]);
        prop_assert_eq!((drained.consumed, drained.error), (buf.len(), None));
    }

    #[test]
    fn replies_parse_back(replies in vec(reply(), 1..4)) {
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for reply in &replies {
            reply.encode(&mut buf);
            ends.push(buf.len());
        }
        let mut at = 0;
        for (reply, end) in replies.iter().zip(ends) {
            for cut in at..end {
                prop_assert_eq!(parse_reply(&buf[at..cut], &Limits::default()), Ok(None));
            }
            let parsed = parse_reply(&buf[at..], &Limits::default());
            prop_assert_eq!(parsed, Ok(Some((reply.clone(), end - at))));
            at = end;
        }
    }
}
