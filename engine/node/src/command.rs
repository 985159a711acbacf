//! Client commands: the arguments of one RESP request, checked and turned into a [`Command`],
//! with Redis's own error texts for the ones that are not right. Pure: no I/O, no state.

/// Longest command name looked up (longer names are unknown commands).
pub const COMMAND_NAME_BYTES_MAX: usize = 24;
/// Most keys one multi-key command (MGET, MSET, DEL, EXISTS) may name.
pub const MULTI_KEYS_MAX: usize = 1 << 16;
/// Default and largest COUNT of a SCAN.
pub const SCAN_COUNT_DEFAULT: usize = 10;
pub const SCAN_COUNT_MAX: usize = 1 << 16;

/// A checked client command. Keys and values borrow the request buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Ping(Option<&'a [u8]>),
    Echo(&'a [u8]),
    Get(&'a [u8]),
    Set(&'a [u8], &'a [u8]),
    Del(Vec<&'a [u8]>),
    Exists(Vec<&'a [u8]>),
    MGet(Vec<&'a [u8]>),
    MSet(Vec<(&'a [u8], &'a [u8])>),
    DbSize,
    Scan {
        cursor: u64,
        count: usize,
        pattern: Option<&'a [u8]>,
    },
    /// SELECT n: the n-th region of the configuration.
    Select(u64),
    /// REGION name: a region by name.
    Region(&'a [u8]),
    Info(Option<&'a [u8]>),
    Quit,
    /// CONFIG GET pattern: answered with an empty map (clients probe it; nothing is settable).
    ConfigGet(&'a [u8]),
    /// CLIENT SETNAME / SETINFO: accepted and ignored (clients send them on connect).
    ClientNoop,
    /// COMMAND, COMMAND DOCS, COMMAND COUNT: an empty answer (redis-cli asks at start).
    CommandInfo,
    /// HELLO [protover ...]: switch to RESP2 or RESP3 (AUTH and SETNAME are accepted and
    /// ignored: there is no authentication yet).
    Hello(Option<u64>),
    /// STRAIT.DEADLETTERS LIST | REPLAY `[region]`: the gateway receiver's dead-letter logs.
    DeadLetters(DeadLettersCommand),
    /// STRAIT.SENDER id START `[CLEAN]` | STOP | PAUSE | RESUME | STATUS: a gateway sender's
    /// lifecycle on every shard (docs/wan.md "Sender operations").
    Sender(&'a [u8], SenderAction),
    /// STRAIT.RECEIVER START | STOP | STATUS: the gateway receiver on every shard (Geode's
    /// `start|stop|status gateway-receiver`); `None` asks for the status.
    Receiver(Option<ReceiverOp>),
    /// STRAIT.STATS: every shard's figures summed, as one JSON document (the admin API's
    /// source; docs/admin-api.md).
    Stats,
    /// STRAIT.LAYOUT PREPARE|COMMIT site-toml region-ids-json receiver-ports: a run-time
    /// change, sent by the server's own admin API (`crate::control`), not by users.
    Layout {
        commit: bool,
        config: &'a [u8],
        ids: &'a [u8],
        ports: &'a [u8],
    },
}

/// A gateway receiver operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiverOp {
    /// Listen on the receiver's ports and advertise them to the locators.
    Start,
    /// Close the listeners and the senders' connections, and stop advertising them.
    Stop,
}

pub use strait_engine::sender::SenderOp;

/// What `STRAIT.SENDER` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenderAction {
    Op(SenderOp),
    Status,
}

/// What `STRAIT.DEADLETTERS` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadLettersCommand {
    /// Every region's count and entries.
    List,
    /// Apply every entry again (of one region, or of all), keep the ones still refused.
    Replay(Option<String>),
}

/// Why a request is not a command this server runs; `Display` is the Redis error line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("ERR unknown command '{name}', with args beginning with: {args}")]
    Unknown { name: String, args: String },
    #[error("ERR wrong number of arguments for '{0}' command")]
    Arity(String),
    #[error("ERR syntax error")]
    Syntax,
    #[error("ERR invalid cursor")]
    Cursor,
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    #[error("ERR too many keys in one command (at most {MULTI_KEYS_MAX})")]
    TooManyKeys,
    #[error("ERR Protocol version is not an integer or out of range")]
    ProtocolVersion,
    #[error(
        "ERR unknown gateway sender operation '{0}' (START [CLEAN], STOP, PAUSE, RESUME or STATUS)"
    )]
    SenderOp(String),
    #[error("ERR unknown gateway receiver operation '{0}' (START, STOP or STATUS)")]
    ReceiverOp(String),
}

fn printable(b: &[u8]) -> String {
    String::from_utf8_lossy(b).chars().take(128).collect()
}

fn integer(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Checks `args` (the command name first) and builds the command.
pub fn parse<'a>(args: &[&'a [u8]]) -> Result<Command<'a>, CommandError> {
    let Some((name, rest)) = args.split_first() else {
        return Err(CommandError::Syntax);
    };
    // Command names are short: lower-case them on the stack, not in an allocation per request.
    let mut lower_buf = [0u8; COMMAND_NAME_BYTES_MAX];
    let lower: &[u8] = match lower_buf.get_mut(..name.len()) {
        Some(dst) => {
            for (d, s) in dst.iter_mut().zip(name.iter()) {
                *d = s.to_ascii_lowercase();
            }
            dst
        }
        // Longer than any command this server knows.
        None => b"",
    };
    let arity = || CommandError::Arity(String::from_utf8_lossy(lower).into_owned());
    let keys = |rest: &[&'a [u8]]| -> Result<Vec<&'a [u8]>, CommandError> {
        if rest.is_empty() {
            return Err(arity());
        }
        if rest.len() > MULTI_KEYS_MAX {
            return Err(CommandError::TooManyKeys);
        }
        Ok(rest.to_vec())
    };
    match (lower, rest) {
        (b"ping", []) => Ok(Command::Ping(None)),
        (b"ping", [m]) => Ok(Command::Ping(Some(m))),
        (b"echo", [m]) => Ok(Command::Echo(m)),
        (b"get", [k]) => Ok(Command::Get(k)),
        (b"set", [k, v]) => Ok(Command::Set(k, v)),
        (b"set", [_, _, ..]) => Err(CommandError::Syntax),
        (b"del", rest) => keys(rest).map(Command::Del),
        (b"exists", rest) => keys(rest).map(Command::Exists),
        (b"mget", rest) => keys(rest).map(Command::MGet),
        (b"mset", rest) => {
            if rest.is_empty() || rest.len() % 2 != 0 {
                return Err(arity());
            }
            if rest.len() / 2 > MULTI_KEYS_MAX {
                return Err(CommandError::TooManyKeys);
            }
            Ok(Command::MSet(
                rest.chunks(2).map(|p| (p[0], p[1])).collect(),
            ))
        }
        (b"dbsize", []) => Ok(Command::DbSize),
        (b"scan", [cursor, opts @ ..]) => {
            let cursor = integer(cursor).ok_or(CommandError::Cursor)?;
            let mut count = SCAN_COUNT_DEFAULT;
            let mut pattern = None;
            let mut it = opts.chunks(2);
            for pair in it.by_ref() {
                let [opt, value] = pair else {
                    return Err(CommandError::Syntax);
                };
                match opt.to_ascii_lowercase().as_slice() {
                    b"count" => {
                        count = integer(value)
                            .filter(|&c| c >= 1)
                            .ok_or(CommandError::NotInteger)?
                            .min(SCAN_COUNT_MAX as u64) as usize;
                    }
                    b"match" => pattern = Some(*value),
                    _ => return Err(CommandError::Syntax),
                }
            }
            Ok(Command::Scan {
                cursor,
                count,
                pattern,
            })
        }
        (b"select", [n]) => integer(n)
            .map(Command::Select)
            .ok_or(CommandError::NotInteger),
        (b"region", [name]) => Ok(Command::Region(name)),
        (b"info", []) => Ok(Command::Info(None)),
        (b"info", [section, ..]) => Ok(Command::Info(Some(section))),
        (b"quit", _) => Ok(Command::Quit),
        (b"config", [sub, pattern]) if sub.eq_ignore_ascii_case(b"get") => {
            Ok(Command::ConfigGet(pattern))
        }
        (b"client", [sub, ..])
            if [&b"setname"[..], b"setinfo"]
                .iter()
                .any(|s| sub.eq_ignore_ascii_case(s)) =>
        {
            Ok(Command::ClientNoop)
        }
        (b"command", _) => Ok(Command::CommandInfo),
        (b"strait.deadletters", [sub, rest @ ..]) => {
            match (sub.to_ascii_lowercase().as_slice(), rest) {
                (b"list", []) => Ok(Command::DeadLetters(DeadLettersCommand::List)),
                (b"replay", []) => Ok(Command::DeadLetters(DeadLettersCommand::Replay(None))),
                (b"replay", [region]) => Ok(Command::DeadLetters(DeadLettersCommand::Replay(
                    Some(String::from_utf8_lossy(region).into_owned()),
                ))),
                _ => Err(CommandError::Syntax),
            }
        }
        (b"strait.deadletters", []) => Err(arity()),
        (b"strait.sender", [id, verb, rest @ ..]) => {
            let op = |op| Ok(Command::Sender(id, SenderAction::Op(op)));
            match (verb.to_ascii_lowercase().as_slice(), rest) {
                (b"start", []) => op(SenderOp::Start { clean: false }),
                (b"start", [c]) if c.eq_ignore_ascii_case(b"clean") => {
                    op(SenderOp::Start { clean: true })
                }
                (b"stop", []) => op(SenderOp::Stop),
                (b"pause", []) => op(SenderOp::Pause),
                (b"resume", []) => op(SenderOp::Resume),
                (b"status", []) => Ok(Command::Sender(id, SenderAction::Status)),
                (b"start" | b"stop" | b"pause" | b"resume" | b"status", _) => {
                    Err(CommandError::Syntax)
                }
                (v, _) => Err(CommandError::SenderOp(printable(v))),
            }
        }
        (b"strait.sender", _) => Err(arity()),
        (b"strait.receiver", [verb]) => match verb.to_ascii_lowercase().as_slice() {
            b"start" => Ok(Command::Receiver(Some(ReceiverOp::Start))),
            b"stop" => Ok(Command::Receiver(Some(ReceiverOp::Stop))),
            b"status" => Ok(Command::Receiver(None)),
            v => Err(CommandError::ReceiverOp(printable(v))),
        },
        (b"strait.receiver", _) => Err(arity()),
        (b"strait.stats", []) => Ok(Command::Stats),
        (b"strait.layout", [phase, config, ids, ports]) => {
            let commit = match phase.to_ascii_lowercase().as_slice() {
                b"prepare" => false,
                b"commit" => true,
                _ => return Err(CommandError::Syntax),
            };
            Ok(Command::Layout {
                commit,
                config,
                ids,
                ports,
            })
        }
        (b"strait.layout", _) => Err(arity()),
        (b"strait.stats", _) => Err(arity()),
        (b"hello", []) => Ok(Command::Hello(None)),
        (b"hello", [v, ..]) => integer(v)
            .map(|v| Command::Hello(Some(v)))
            .ok_or(CommandError::ProtocolVersion),
        (
            b"ping" | b"echo" | b"get" | b"set" | b"dbsize" | b"scan" | b"select" | b"region"
            | b"config" | b"client",
            _,
        ) => Err(arity()),
        _ => Err(CommandError::Unknown {
            name: printable(name),
            args: rest
                .iter()
                .take(8)
                .map(|a| format!("'{}' ", printable(a)))
                .collect(),
        }),
    }
}

/// Whether `key` matches a Redis glob `pattern` (`*`, `?`, `[abc]`, `[a-z]`, `[^a]`, `\x`).
pub fn glob_match(pattern: &[u8], key: &[u8]) -> bool {
    fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
        // p starts after '['; returns (matched, bytes of the class including ']').
        let mut i = 0;
        let negate = p.first() == Some(&b'^');
        if negate {
            i += 1;
        }
        let mut hit = false;
        while i < p.len() && p[i] != b']' {
            if p[i] == b'\\' && i + 1 < p.len() {
                hit |= p[i + 1] == c;
                i += 2;
            } else if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
                let (lo, hi) = (p[i].min(p[i + 2]), p[i].max(p[i + 2]));
                hit |= (lo..=hi).contains(&c);
                i += 3;
            } else {
                hit |= p[i] == c;
                i += 1;
            }
        }
        (i < p.len()).then_some((hit != negate, i + 1))
    }
    let (mut p, mut k) = (0, 0);
    let (mut star_p, mut star_k) = (None, 0);
    while k < key.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star_p = Some(p);
                star_k = k;
                p += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') => match class(&pattern[p + 1..], key[k]) {
                Some((true, len)) => Some(1 + len),
                _ => None,
            },
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == key[k]).then_some(2),
            Some(&c) => (c == key[k]).then_some(1),
            None => None,
        };
        match step {
            Some(n) => {
                p += n;
                k += 1;
            }
            None => match star_p {
                Some(sp) => {
                    p = sp + 1;
                    star_k += 1;
                    k = star_k;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(line: &str) -> Result<Command<'_>, CommandError> {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        parse(&args)
    }

    #[test]
    fn commands_parse_case_insensitively() {
        assert_eq!(cmd("get k"), Ok(Command::Get(b"k")));
        assert_eq!(cmd("SET k v"), Ok(Command::Set(b"k", b"v")));
        assert_eq!(
            cmd("MSET a 1 b 2"),
            Ok(Command::MSet(vec![(&b"a"[..], &b"1"[..]), (b"b", b"2")]))
        );
        assert_eq!(cmd("del a b"), Ok(Command::Del(vec![b"a", b"b"])));
        assert_eq!(
            cmd("scan 0 COUNT 100 MATCH k*"),
            Ok(Command::Scan {
                cursor: 0,
                count: 100,
                pattern: Some(b"k*")
            })
        );
        assert_eq!(
            cmd("scan 7"),
            Ok(Command::Scan {
                cursor: 7,
                count: SCAN_COUNT_DEFAULT,
                pattern: None
            })
        );
        assert_eq!(cmd("select 2"), Ok(Command::Select(2)));
        assert_eq!(cmd("config GET save"), Ok(Command::ConfigGet(b"save")));
        assert_eq!(
            cmd("client setinfo lib-name redis-py"),
            Ok(Command::ClientNoop)
        );
        assert_eq!(cmd("ping"), Ok(Command::Ping(None)));
        assert_eq!(cmd("HELLO 3 SETNAME app"), Ok(Command::Hello(Some(3))));
        assert_eq!(cmd("hello x"), Err(CommandError::ProtocolVersion));
    }

    #[test]
    fn errors_use_redis_texts() {
        assert_eq!(
            cmd("get").unwrap_err().to_string(),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            cmd("get a b").unwrap_err().to_string(),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            cmd("mset a").unwrap_err().to_string(),
            "ERR wrong number of arguments for 'mset' command"
        );
        assert_eq!(cmd("set k v EX 10").unwrap_err(), CommandError::Syntax);
        assert_eq!(cmd("scan x").unwrap_err().to_string(), "ERR invalid cursor");
        assert_eq!(cmd("scan 0 count 0").unwrap_err(), CommandError::NotInteger);
        assert_eq!(cmd("select x").unwrap_err(), CommandError::NotInteger);
        assert_eq!(
            cmd("flushall async").unwrap_err().to_string(),
            "ERR unknown command 'flushall', with args beginning with: 'async' "
        );
        assert_eq!(
            cmd("averyveryverylongcommandname x")
                .unwrap_err()
                .to_string(),
            "ERR unknown command 'averyveryverylongcommandname', with args beginning with: 'x' "
        );
    }

    #[test]
    fn globs_match_like_redis() {
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"k*", b"key"));
        assert!(!glob_match(b"k*", b"ey"));
        assert!(glob_match(b"h?llo", b"hello"));
        assert!(glob_match(b"h[ae]llo", b"hallo"));
        assert!(!glob_match(b"h[^e]llo", b"hello"));
        assert!(glob_match(b"h[a-c]llo", b"hbllo"));
        assert!(glob_match(b"a\\*b", b"a*b"));
        assert!(!glob_match(b"a\\*b", b"axb"));
        assert!(glob_match(b"*:*:end", b"x:y:z:end"));
        assert!(!glob_match(b"abc", b"abcd"));
        assert!(glob_match(b"", b""));
    }

    #[test]
    fn receiver_operations_parse_and_bad_ones_say_why() {
        let op = |o| Ok(Command::Receiver(o));
        assert_eq!(cmd("STRAIT.RECEIVER start"), op(Some(ReceiverOp::Start)));
        assert_eq!(cmd("strait.receiver STOP"), op(Some(ReceiverOp::Stop)));
        assert_eq!(cmd("strait.receiver Status"), op(None));
        assert_eq!(
            cmd("strait.receiver pause"),
            Err(CommandError::ReceiverOp("pause".into()))
        );
        assert_eq!(
            cmd("strait.receiver"),
            Err(CommandError::Arity("strait.receiver".into()))
        );
        assert_eq!(
            cmd("strait.receiver start now"),
            Err(CommandError::Arity("strait.receiver".into()))
        );
    }

    #[test]
    fn sender_operations_parse_and_bad_ones_say_why() {
        let op = |o| Ok(Command::Sender(b"to2", SenderAction::Op(o)));
        assert_eq!(
            cmd("STRAIT.SENDER to2 start"),
            op(SenderOp::Start { clean: false })
        );
        assert_eq!(
            cmd("strait.sender to2 START clean"),
            op(SenderOp::Start { clean: true })
        );
        assert_eq!(cmd("strait.sender to2 stop"), op(SenderOp::Stop));
        assert_eq!(cmd("strait.sender to2 Pause"), op(SenderOp::Pause));
        assert_eq!(cmd("strait.sender to2 resume"), op(SenderOp::Resume));
        assert_eq!(
            cmd("strait.sender to2 status"),
            Ok(Command::Sender(b"to2", SenderAction::Status))
        );
        assert_eq!(
            cmd("strait.sender to2 start dirty"),
            Err(CommandError::Syntax)
        );
        assert_eq!(cmd("strait.sender to2 stop now"), Err(CommandError::Syntax));
        assert_eq!(
            cmd("strait.sender to2 restart"),
            Err(CommandError::SenderOp("restart".into()))
        );
        assert_eq!(
            cmd("strait.sender to2"),
            Err(CommandError::Arity("strait.sender".into()))
        );
        assert_eq!(
            cmd("strait.sender").unwrap_err().to_string(),
            "ERR wrong number of arguments for 'strait.sender' command"
        );
    }
}
