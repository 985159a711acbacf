//! Helpers shared by the RESP tests.

use strait_net::{Limits, Parsed, RespError, parse_command};

/// What parsing a buffer front to back gives: each command's arguments, `Skip`s left out.
#[derive(Debug, PartialEq, Eq)]
pub struct Drained {
    /// The commands' arguments, in order.
    pub commands: Vec<Vec<Vec<u8>>>,
    /// Bytes consumed by the commands and skips.
    pub consumed: usize,
    /// The error that stopped parsing, if one did.
    pub error: Option<RespError>,
}

/// Parses commands off the front of `buf` until it is incomplete or refused.
pub fn drain(buf: &[u8], limits: &Limits) -> Drained {
    let mut drained = Drained {
        commands: Vec::new(),
        consumed: 0,
        error: None,
    };
    loop {
        let rest = &buf[drained.consumed..];
        match parse_command(rest, limits) {
            Ok(Parsed::Incomplete) => return drained,
            Ok(Parsed::Skip { consumed }) => {
                assert!(consumed > 0 && consumed <= rest.len());
                drained.consumed += consumed;
            }
            Ok(Parsed::Command(cmd)) => {
                assert!(cmd.consumed > 0 && cmd.consumed <= rest.len());
                assert!(!cmd.args.is_empty());
                drained
                    .commands
                    .push(cmd.args(rest).map(<[u8]>::to_vec).collect());
                drained.consumed += cmd.consumed;
            }
            Err(error) => {
                drained.error = Some(error);
                return drained;
            }
        }
    }
}
