//! The RESP2 request parser and reply parser.
//!
//! Invariants: nothing panics; a command or skip consumes at most the buffer and at least one
//! byte; every proper prefix of a whole command is incomplete (a server must wait, not
//! refuse); a parsed command encoded again as a multibulk request parses to the same
//! arguments; a parsed reply encodes to bytes that parse to a reply encoding the same way.

use crate::rng::Rng;
use crate::{Target, Verdict, variant};
use strait_net::{Limits, Parsed, encode_command, parse_command, parse_reply};

pub const TARGET: Target = Target {
    name: "resp",
    generate,
    fixup,
    run,
};

/// Small limits, so the limit checks are reached by small inputs too.
fn small_limits() -> Limits {
    Limits {
        bulk_bytes_max: 64,
        array_len_max: 8,
        inline_bytes_max: 32,
    }
}

fn word(rng: &mut Rng) -> Vec<u8> {
    match rng.below(5) {
        0 => b"SET".to_vec(),
        1 => b"GET".to_vec(),
        2 => rng.some_bytes(40),
        3 => b"\"a b\\x41\\n\"".to_vec(),
        _ => b"'it''s'".to_vec(),
    }
}

fn generate(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 | 1 => {
                let args: Vec<Vec<u8>> = (0..1 + rng.small_len(5)).map(|_| word(rng)).collect();
                encode_command(&mut out, &args);
            }
            2 => {
                // Inline.
                let n = 1 + rng.small_len(4);
                for i in 0..n {
                    if i > 0 {
                        out.push(b' ');
                    }
                    let w = word(rng);
                    out.extend(w.into_iter().filter(|b| !matches!(b, b'\r' | b'\n' | b' ')));
                }
                out.extend_from_slice(if rng.one_in(2) { b"\r\n" } else { b"\n" });
            }
            3 => out.extend_from_slice(rng.pick::<&[u8]>(&[
                b"*0\r\n",
                b"*-1\r\n",
                b"+OK\r\n",
                b"-ERR bad\r\n",
                b":-42\r\n",
                b"$-1\r\n",
                b"*2\r\n$1\r\na\r\n:1\r\n",
                b"*1\r\n*1\r\n*-1\r\n",
            ])),
            _ => {
                let n = rng.small_len(12);
                out.extend_from_slice(format!("${n}\r\n").as_bytes());
                out.extend(rng.bytes(n));
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out
}

fn fixup(_rng: &mut Rng, _data: &mut Vec<u8>) {}

fn run(data: &[u8]) -> Verdict {
    let mut labels = Vec::new();
    for limits in [Limits::default(), small_limits()] {
        labels.push(commands(data, &limits)?);
        labels.push(replies(data, &limits)?);
    }
    // The outcome with default limits; the small limits are checked, not labelled.
    labels.truncate(2);
    Ok(labels.join(","))
}

fn commands(data: &[u8], limits: &Limits) -> Verdict {
    let mut at = 0;
    let mut label = String::from("none");
    for _ in 0..64 {
        let buf = &data[at..];
        match parse_command(buf, limits) {
            Ok(Parsed::Incomplete) => return Ok(format!("{label}+inc")),
            Err(e) => {
                if e.to_string().is_empty() {
                    return Err("an error with no text".into());
                }
                return Ok(format!("{label}+{}", variant(&e)));
            }
            Ok(Parsed::Skip { consumed }) => {
                if consumed == 0 || consumed > buf.len() {
                    return Err(format!("a skip of {consumed} of {} bytes", buf.len()));
                }
                label = "skip".into();
                at += consumed;
            }
            Ok(Parsed::Command(cmd)) => {
                let n = cmd.consumed;
                if n == 0 || n > buf.len() || cmd.args.is_empty() {
                    return Err(format!(
                        "a command of {} arguments consuming {n} of {} bytes",
                        cmd.args.len(),
                        buf.len()
                    ));
                }
                for k in [0, n / 2, n - 1] {
                    match parse_command(&buf[..k], limits) {
                        Ok(Parsed::Incomplete) => {}
                        other => {
                            return Err(format!(
                                "the prefix of {k} bytes of a {n}-byte command parses as {other:?}"
                            ));
                        }
                    }
                }
                let args: Vec<&[u8]> = cmd.args(buf).collect();
                let mut again = Vec::new();
                encode_command(&mut again, &args);
                match parse_command(&again, limits) {
                    Ok(Parsed::Command(c2)) => {
                        let args2: Vec<&[u8]> = c2.args(&again).collect();
                        if args2 != args || c2.consumed != again.len() {
                            return Err("a command encoded again parses differently".into());
                        }
                    }
                    // A quoted inline argument may unescape to more than the bulk limit.
                    Err(e) if e.is_over_limit() => {}
                    other => {
                        return Err(format!("a command encoded again parses as {other:?}"));
                    }
                }
                label = "cmd".into();
                at += n;
            }
        }
    }
    Ok(label)
}

fn replies(data: &[u8], limits: &Limits) -> Verdict {
    match parse_reply(data, limits) {
        Ok(None) => Ok("r-inc".into()),
        Err(e) => Ok(format!("r-{}", variant(&e))),
        Ok(Some((reply, n))) => {
            if n == 0 || n > data.len() {
                return Err(format!("a reply consuming {n} of {} bytes", data.len()));
            }
            if !matches!(parse_reply(&data[..n - 1], limits), Ok(None)) {
                return Err("a proper prefix of a whole reply is not incomplete".into());
            }
            let mut once = Vec::new();
            reply.encode(&mut once);
            let Ok(Some((again, m))) = parse_reply(&once, limits) else {
                return Err(format!("reply {reply:?} encoded does not parse"));
            };
            let mut twice = Vec::new();
            again.encode(&mut twice);
            if m != once.len() || twice != once {
                return Err(format!("reply {reply:?} does not survive a round trip"));
            }
            Ok(format!("r-{}", variant(&reply)))
        }
    }
}
