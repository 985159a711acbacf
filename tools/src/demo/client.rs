//! [`Client`]: a blocking RESP2 client for the demo's own connections (the writer, the INFO
//! polls, the verification). The demo runs on ordinary threads, never on a shard, so plain
//! blocking sockets with timeouts are the simplest right tool; the protocol itself is
//! `strait_net::resp`'s.

use anyhow::{Context, bail};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;
use strait_net::resp::{self, Limits, Reply};

/// How long connecting to a server, or one reply, may take before the demo gives up on it.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read from the socket at a time.
const READ_BYTES: usize = 64 << 10;

/// One connection to a server's client port, with commands queued for pipelining.
#[derive(Debug)]
pub struct Client {
    addr: SocketAddr,
    stream: TcpStream,
    /// Commands queued by [`Client::push`], not sent yet.
    out: Vec<u8>,
    /// Replies pushed but not read yet.
    pending: usize,
    /// Bytes read and not parsed yet: `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
    limits: Limits,
}

impl Client {
    /// Connects to `127.0.0.1:port`.
    pub fn connect(port: u16) -> anyhow::Result<Client> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, REPLY_TIMEOUT)
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            addr,
            stream,
            out: Vec::new(),
            pending: 0,
            buf: Vec::new(),
            start: 0,
            limits: Limits::default(),
        })
    }

    /// Queues a command; [`Client::replies`] sends what is queued and reads the replies.
    pub fn push<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        resp::encode_command(&mut self.out, args);
        self.pending += 1;
    }

    /// Sends the queued commands and reads one reply for each, in order.
    pub fn replies(&mut self) -> anyhow::Result<Vec<Reply>> {
        let addr = self.addr;
        self.stream
            .write_all(&self.out)
            .with_context(|| format!("writing to {addr}"))?;
        self.out.clear();
        let mut replies = Vec::with_capacity(self.pending);
        while replies.len() < self.pending {
            match resp::parse_reply(&self.buf[self.start..], &self.limits)
                .map_err(|e| anyhow::anyhow!("{addr} answered garbage: {e}"))?
            {
                Some((reply, used)) => {
                    self.start += used;
                    replies.push(reply);
                }
                None => self.read_more()?,
            }
        }
        self.pending = 0;
        Ok(replies)
    }

    /// Sends one command and reads its reply; an error reply is an error.
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> anyhow::Result<Reply> {
        self.push(args);
        let reply = self.replies()?.pop().unwrap_or(Reply::Bulk(None));
        if let Reply::Error(e) = &reply {
            bail!(
                "{} answered {}: {}",
                self.addr,
                String::from_utf8_lossy(args.first().map_or(&b""[..], |a| a.as_ref())),
                String::from_utf8_lossy(e)
            );
        }
        Ok(reply)
    }

    /// INFO's text.
    pub fn info(&mut self) -> anyhow::Result<String> {
        match self.call(&["INFO"])? {
            Reply::Bulk(Some(text)) => Ok(String::from_utf8_lossy(&text).into_owned()),
            other => bail!("{} answered INFO with {other:?}", self.addr),
        }
    }

    fn read_more(&mut self) -> anyhow::Result<()> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_BYTES, 0);
        let n = self.stream.read(&mut self.buf[len..]);
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(len);
                return Err(e).with_context(|| format!("reading from {}", self.addr));
            }
        };
        self.buf.truncate(len + n);
        if n == 0 {
            bail!("{} closed the connection", self.addr);
        }
        Ok(())
    }
}
