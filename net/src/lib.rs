//! # strait-net: Strait's wire protocols
//!
//! The WAN link between sites, in [`wire`]; the RESP2 client protocol, in [`resp`]; the
//! locator protocol's messages and routes, in [`locator`]. Everything here is pure: bytes in,
//! values or bytes out, no I/O, no panics on any input; the connection state machines of
//! [`wire`] keep state but take the time as an argument and return what to do.
//!
//! | item | what it is |
//! |---|---|
//! | [`wire::decode_frame`] → [`wire::Frame`] | a WAN frame at the front of a read buffer (Hello, HelloReply, Batch, Ack, Ping, Pong), borrowing from it; `None` until it is whole |
//! | [`wire::Batch::records`] | a batch's records parsed in place, every CRC and the count checked |
//! | [`wire::batch_prefix`], [`wire::Frame::encode`] | frame bytes; a batch's records are written after its prefix straight from the queue |
//! | [`wire::SenderConn`] | a gateway sender's connection: handshake, window of `inflight_batches_max` batches or `inflight_events_max` events, acks in order, ack and ping timeouts; runs on the dispatcher's shard |
//! | [`wire::ReceiverConn`] | a gateway receiver's connection: hello checks (version, site), consecutive batch ids, acks, pongs, silence timeout; runs on the listener's shard |
//! | [`wire::FrameError`], [`wire::SenderError`], [`wire::ReceiverError`] | what the peer got wrong, field by field |
//! | [`parse_command`] → [`Parsed`] | the request at the front of a read buffer: a [`Command`], a [`Parsed::Skip`] of an empty one, or [`Parsed::Incomplete`] |
//! | [`Command`], [`Arg`] | a request's arguments, as ranges into the read buffer (copied only for quoted inline words) |
//! | [`Limits`] | every size a peer can declare: bulk bytes, array length, inline line bytes; redis's defaults |
//! | [`RespError`] | why a peer's bytes were refused, garbage or over a limit; its text is redis's error reply, and the server closes the connection after it |
//! | [`Reply`], `encode_*` | replies (and, for clients, commands) appended to a `Vec<u8>` |
//! | [`parse_reply`] | the reply at the front of a buffer, for clients and tests |
//! | [`locator::route`] → [`locator::Route`] | a locator request's endpoint, from its method and path |
//! | [`locator::RegisterRequest`], [`locator::ServersReply`], [`locator::ErrorReply`], … | the locator's JSON bodies (serde) |
//!
//! A server reads into a buffer, parses commands off its front until one is incomplete, and
//! keeps the rest for the next read:
//!
//! ```
//! use strait_net::{Limits, Parsed, Reply, encode_bulk, encode_simple, parse_command, parse_reply};
//!
//! let limits = Limits::default();
//! let buf = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*0\r\nPING\r\n*1\r\n$4\r\nPI";
//! let (mut at, mut out) = (0, Vec::new());
//! loop {
//!     match parse_command(&buf[at..], &limits)? {
//!         Parsed::Incomplete => break, // keep buf[at..], read more
//!         Parsed::Skip { consumed } => at += consumed,
//!         Parsed::Command(cmd) => {
//!             match cmd.args(&buf[at..]).collect::<Vec<_>>()[..] {
//!                 [b"GET", key] => encode_bulk(&mut out, key),
//!                 _ => encode_simple(&mut out, b"PONG"),
//!             }
//!             at += cmd.consumed;
//!         }
//!     }
//! }
//! assert_eq!(&buf[at..], b"*1\r\n$4\r\nPI");
//! assert_eq!(out, b"$1\r\nk\r\n+PONG\r\n");
//!
//! let (reply, consumed) = parse_reply(&out, &limits)?.expect("a whole reply");
//! assert_eq!((reply, consumed), (Reply::Bulk(Some(b"k".to_vec())), 7));
//! # Ok::<(), strait_net::RespError>(())
//! ```
#![forbid(unsafe_code)]

pub mod locator;
pub mod resp;
pub mod wire;

pub use resp::{
    Arg, Command, Limits, Parsed, Reply, RespError, encode_array_header, encode_bulk,
    encode_command, encode_error, encode_integer, encode_map_header, encode_null_array,
    encode_null_bulk, encode_null3, encode_simple, parse_command, parse_reply,
};
