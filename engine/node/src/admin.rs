//! The server's admin API: HTTP and JSON on `http-service-port` (docs/admin-api.md), and
//! Prometheus metrics at `/metrics`.
//!
//! | type or function | what it is |
//! |---|---|
//! | [`Route`], [`route`] | a request's method and path as an operation, or why it is none (pure) |
//! | [`ApiError`] | an error answer: HTTP status, message, what to do |
//! | [`start`], [`AdminHandle`] | the HTTP service: tiny_http plus [`ADMIN_WORKERS`] plain threads |
//! | [`RespClient`] | a blocking RESP connection to this server's own client port |
//! | [`metrics`] | the Prometheus text of a `STRAIT.STATS` document |
//!
//! `GET /v1/config` answers from the running configuration, without a RESP call; run-time
//! changes (create, alter, destroy) go through [`crate::control::Control`].
//!
//! The admin API runs on its own threads, never on a shard. Each request becomes RESP
//! commands sent over loopback to this server's client port — the path every client takes —
//! so the control plane needs no channel into the shards' executors: `STRAIT.STATS` (every
//! shard's figures summed, as JSON), `STRAIT.SENDER`, `STRAIT.RECEIVER`,
//! `STRAIT.DEADLETTERS`, `REGION` + `GET`/`SET`/`DEL`.

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use strait_net::resp::{self, Limits, Reply};

/// Geode's `http-service-port` default.
pub const HTTP_SERVICE_PORT_DEFAULT: u16 = 7070;
/// Threads answering admin requests; a client that stalls holds one.
pub const ADMIN_WORKERS: usize = 4;
/// Largest request body (an entry's value in `PUT .../entries/{key}`).
pub const ADMIN_BODY_BYTES_MAX: usize = 64 << 20;
/// How long a worker waits for this server to answer one command.
pub const ADMIN_CALL_TIMEOUT_MS: u64 = 30_000;
/// How often a worker checks whether the server is stopping.
const ADMIN_POLL_MS: u64 = 100;

/// What an admin request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /v1/member`: the whole `STRAIT.STATS` document.
    Member,
    /// `GET /v1/gateways`: Geode's `list gateways` rows.
    Gateways,
    /// `GET /v1/gateway-senders/{id}`.
    SenderStatus(String),
    /// `POST /v1/gateway-senders/{id}/{start|stop|pause|resume}`; `start?clean-queues=true`.
    SenderOp { id: String, op: &'static str },
    /// `GET /v1/gateway-receiver`.
    ReceiverStatus,
    /// `POST /v1/gateway-receiver/{start|stop}`.
    ReceiverOp(&'static str),
    /// `GET /v1/regions`.
    Regions,
    /// `GET /v1/regions/{region}/entries/{key}`.
    Get { region: String, key: Vec<u8> },
    /// `PUT /v1/regions/{region}/entries/{key}` with the value as the body.
    Put { region: String, key: Vec<u8> },
    /// `DELETE /v1/regions/{region}/entries/{key}`.
    Remove { region: String, key: Vec<u8> },
    /// `GET /v1/dead-letters`.
    DeadLetters,
    /// `POST /v1/dead-letters/replay[?region=name]`.
    Replay(Option<String>),
    /// `GET /metrics`.
    Metrics,
    /// `GET /v1/config`: the configuration the server runs with, as a `site.toml`.
    Config,
    /// `GET /v1/disk-stores`.
    DiskStores,
    /// A run-time change (`crate::runtime`): `POST /v1/{disk-stores|gateway-senders|
    /// gateway-receiver|regions}` creates (options in the body), `PATCH
    /// /v1/{gateway-senders|regions}/{name}` alters, `DELETE /v1/{...}/{name}` (and `DELETE
    /// /v1/gateway-receiver`) destroys.
    Change {
        op: ChangeOp,
        kind: Kind,
        name: Option<String>,
    },
}

/// What a change route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeOp {
    Create,
    Alter,
    Destroy,
}

/// What a change route changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    DiskStore,
    GatewaySender,
    GatewayReceiver,
    Region,
}

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub error: String,
    /// What to do about it.
    pub hint: String,
}

impl ApiError {
    fn new(status: u16, error: impl Into<String>, hint: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            hint: hint.into(),
        }
    }

    fn body(&self) -> String {
        json!({ "error": self.error, "hint": self.hint }).to_string()
    }
}

/// Decodes `%XX` escapes (a key may hold any bytes); `+` stays `+`.
fn percent_decode(s: &str) -> Result<Vec<u8>, ApiError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        400,
                        format!("bad percent-escape in `{s}`"),
                        "escape bytes as %XX with two hex digits",
                    )
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn text(s: &str) -> Result<String, ApiError> {
    String::from_utf8(percent_decode(s)?)
        .map_err(|_| ApiError::new(400, format!("`{s}` is not UTF-8"), "names are UTF-8"))
}

/// The operation of `method` on `target` (a path with an optional query).
pub fn route(method: &str, target: &str) -> Result<Route, ApiError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let param = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let not_found = || {
        ApiError::new(
            404,
            format!("no such endpoint: {method} {path}"),
            "docs/admin-api.md lists the endpoints",
        )
    };
    let r = match (method, parts.as_slice()) {
        ("GET", ["metrics"]) => Route::Metrics,
        ("GET", ["v1", "member"]) => Route::Member,
        ("GET", ["v1", "config"]) => Route::Config,
        ("GET", ["v1", "gateways"]) => Route::Gateways,
        ("GET", ["v1", "gateway-senders", id]) => Route::SenderStatus(text(id)?),
        ("POST", ["v1", "gateway-senders", id, op]) => {
            let op = match *op {
                "start" => match param("clean-queues") {
                    None | Some("false") => "start",
                    Some("true") => "start-clean",
                    Some(v) => {
                        return Err(ApiError::new(
                            400,
                            format!("clean-queues={v} is not true or false"),
                            "use ?clean-queues=true",
                        ));
                    }
                },
                "stop" => "stop",
                "pause" => "pause",
                "resume" => "resume",
                other => {
                    return Err(ApiError::new(
                        400,
                        format!("unknown gateway sender operation `{other}`"),
                        "use start, stop, pause or resume",
                    ));
                }
            };
            Route::SenderOp { id: text(id)?, op }
        }
        ("GET", ["v1", "gateway-receiver"]) => Route::ReceiverStatus,
        ("POST", ["v1", "gateway-receiver", "start"]) => Route::ReceiverOp("start"),
        ("POST", ["v1", "gateway-receiver", "stop"]) => Route::ReceiverOp("stop"),
        ("GET", ["v1", "regions"]) => Route::Regions,
        (m, ["v1", "regions", region, "entries", key]) => {
            let (region, key) = (text(region)?, percent_decode(key)?);
            match m {
                "GET" => Route::Get { region, key },
                "PUT" => Route::Put { region, key },
                "DELETE" => Route::Remove { region, key },
                _ => {
                    return Err(ApiError::new(
                        405,
                        format!("{m} is not allowed on an entry"),
                        "use GET, PUT or DELETE",
                    ));
                }
            }
        }
        ("GET", ["v1", "disk-stores"]) => Route::DiskStores,
        ("POST", ["v1", kind]) if kind_of(kind).is_some() => Route::Change {
            op: ChangeOp::Create,
            kind: kind_of(kind).unwrap_or(Kind::Region),
            name: None,
        },
        ("DELETE", ["v1", "gateway-receiver"]) => Route::Change {
            op: ChangeOp::Destroy,
            kind: Kind::GatewayReceiver,
            name: None,
        },
        (m @ ("PATCH" | "DELETE"), ["v1", kind, name])
            if kind_of(kind).is_some_and(|k| k != Kind::GatewayReceiver)
                && (m == "DELETE" || matches!(*kind, "gateway-senders" | "regions")) =>
        {
            Route::Change {
                op: if m == "PATCH" {
                    ChangeOp::Alter
                } else {
                    ChangeOp::Destroy
                },
                kind: kind_of(kind).unwrap_or(Kind::Region),
                name: Some(text(name)?),
            }
        }
        ("GET", ["v1", "dead-letters"]) => Route::DeadLetters,
        ("POST", ["v1", "dead-letters", "replay"]) => {
            Route::Replay(param("region").map(text).transpose()?)
        }
        _ => return Err(not_found()),
    };
    Ok(r)
}

fn kind_of(segment: &str) -> Option<Kind> {
    match segment {
        "disk-stores" => Some(Kind::DiskStore),
        "gateway-senders" => Some(Kind::GatewaySender),
        "gateway-receiver" => Some(Kind::GatewayReceiver),
        "regions" => Some(Kind::Region),
        _ => None,
    }
}

/// The change a change route and its JSON body (an object of `site.toml` options) ask for.
pub fn change_of(
    op: ChangeOp,
    kind: Kind,
    name: Option<String>,
    body: &[u8],
) -> Result<crate::runtime::Change, ApiError> {
    use crate::runtime::Change;
    let options = || -> Result<serde_json::Map<String, Value>, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Map::new());
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(ApiError::new(
                400,
                "the body is not a JSON object",
                "send the options as an object, e.g. {\"name\": \"orders\", \"type\": \"partition\"}",
            )),
            Err(e) => Err(ApiError::new(
                400,
                format!("the body is not JSON: {e}"),
                "send the options as a JSON object",
            )),
        }
    };
    let name = || name.clone().unwrap_or_default();
    Ok(match (op, kind) {
        (ChangeOp::Create, Kind::DiskStore) => {
            let o = options()?;
            let field = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
            let (Some(n), Some(d)) = (field("name"), field("directory")) else {
                return Err(ApiError::new(
                    400,
                    "a disk store needs `name` and `directory`",
                    "send {\"name\": \"...\", \"directory\": \"...\"}",
                ));
            };
            Change::CreateDiskStore {
                name: n,
                directory: d.into(),
            }
        }
        (ChangeOp::Destroy, Kind::DiskStore) => Change::DestroyDiskStore { name: name() },
        (ChangeOp::Create, Kind::GatewaySender) => Change::CreateGatewaySender {
            options: options()?,
        },
        (ChangeOp::Alter, Kind::GatewaySender) => Change::AlterGatewaySender {
            id: name(),
            options: options()?,
        },
        (ChangeOp::Destroy, Kind::GatewaySender) => Change::DestroyGatewaySender { id: name() },
        (ChangeOp::Create, Kind::GatewayReceiver) => Change::CreateGatewayReceiver {
            options: options()?,
        },
        (ChangeOp::Destroy, Kind::GatewayReceiver) => Change::DestroyGatewayReceiver,
        (ChangeOp::Create, Kind::Region) => Change::CreateRegion {
            options: options()?,
        },
        (ChangeOp::Alter, Kind::Region) => {
            let o = options()?;
            let ids = match o.get("gateway-sender-ids") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>(),
                _ => None,
            };
            let Some(ids) = ids.filter(|_| o.len() == 1) else {
                return Err(ApiError::new(
                    400,
                    "alter region changes only `gateway-sender-ids`, a list of sender ids",
                    "send {\"gateway-sender-ids\": [\"to2\"]} ([] detaches every sender)",
                ));
            };
            Change::AlterRegion {
                name: name(),
                gateway_sender_ids: ids,
            }
        }
        (ChangeOp::Destroy, Kind::Region) => Change::DestroyRegion { name: name() },
        (ChangeOp::Alter, Kind::DiskStore | Kind::GatewayReceiver) => {
            return Err(ApiError::new(
                405,
                "disk stores and the gateway receiver cannot be altered",
                "destroy it and create it again",
            ));
        }
    })
}

fn control_error(e: crate::control::ControlError) -> ApiError {
    use crate::control::ControlError as C;
    use crate::runtime::ChangeError as R;
    match e {
        C::Refused(R::Exists(m)) => {
            ApiError::new(409, m, "choose another name or destroy it first")
        }
        C::Refused(R::NotFound(m)) => ApiError::new(404, m, "check the name"),
        C::Refused(R::InUse(m)) => ApiError::new(409, m, "the error says what to change first"),
        C::Refused(R::Invalid(m)) => ApiError::new(
            400,
            m,
            "docs/configuration.md lists every option and its range",
        ),
        C::Ports(e) => ApiError::new(
            409,
            e.to_string(),
            "widen start-port..end-port or free ports",
        ),
        C::Directory(m) => ApiError::new(500, m, "check the path and its permissions"),
        C::Journal(e) => ApiError::new(500, e.to_string(), "check the server's directory"),
        C::Shards(m) => ApiError::new(500, m, "nothing was changed; the server's log says more"),
        C::Partly(m) => ApiError::new(500, m, "the server's log says more"),
    }
}

/// A blocking RESP connection to this server's client port.
#[derive(Debug)]
pub struct RespClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RespClient {
    /// Connects to `addr`; an unspecified address (`0.0.0.0`, `::`) is reached over loopback.
    pub fn connect(addr: SocketAddr) -> std::io::Result<RespClient> {
        let ip = match addr.ip() {
            IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let timeout = Duration::from_millis(ADMIN_CALL_TIMEOUT_MS);
        let stream = TcpStream::connect_timeout(&SocketAddr::new(ip, addr.port()), timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let _ = stream.set_nodelay(true);
        Ok(RespClient {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends one command and reads its reply.
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<Reply> {
        let mut out = Vec::new();
        resp::encode_command(&mut out, args);
        self.stream.write_all(&out)?;
        let limits = Limits::default();
        loop {
            match resp::parse_reply(&self.buf, &limits) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            let mut chunk = [0u8; 64 << 10];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// An answer: status, content type, body.
type Answer = (u16, &'static str, Vec<u8>);

const JSON: &str = "application/json";

fn json_answer(status: u16, v: &Value) -> Answer {
    (status, JSON, v.to_string().into_bytes())
}

/// Turns a RESP error reply into an API error: unknown things are 404, refusals 409.
fn refused(line: &[u8]) -> ApiError {
    let text = String::from_utf8_lossy(line).into_owned();
    let text = text.strip_prefix("ERR ").unwrap_or(&text).to_string();
    let (status, hint) = if text.starts_with("unknown gateway sender") {
        (404, "`GET /v1/gateways` lists this server's senders")
    } else if text.contains("no gateway receiver") {
        (404, "configure [gateway-receiver] in site.toml")
    } else if text.contains("no such region") || text.contains("unknown region") {
        (404, "`GET /v1/regions` lists this server's regions")
    } else {
        (409, "the error says what to change")
    };
    ApiError::new(status, text, hint)
}

fn unreachable_server(e: &std::io::Error) -> ApiError {
    ApiError::new(
        502,
        format!("this server's client port did not answer: {e}"),
        "the server may be stopping; try again",
    )
}

fn expect_ok(reply: Reply) -> Result<String, ApiError> {
    match reply {
        Reply::Simple(s) => Ok(String::from_utf8_lossy(&s).into_owned()),
        Reply::Bulk(Some(s)) => Ok(String::from_utf8_lossy(&s).into_owned()),
        Reply::Error(e) => Err(refused(&e)),
        other => Err(ApiError::new(
            500,
            format!("unexpected reply {other:?}"),
            "report this",
        )),
    }
}

/// The `STRAIT.STATS` document.
fn stats(c: &mut RespClient) -> Result<Value, ApiError> {
    let text = expect_ok(
        c.call(&["STRAIT.STATS"])
            .map_err(|e| unreachable_server(&e))?,
    )?;
    serde_json::from_str(&text)
        .map_err(|e| ApiError::new(500, format!("STRAIT.STATS is not JSON: {e}"), "report this"))
}

/// Geode's `list gateways` status words.
fn gateway_status(sender: &Value) -> &'static str {
    let connected = sender["connected_shards"].as_u64().unwrap_or(0);
    match sender["state"].as_str() {
        Some("running") if connected > 0 => "Running and Connected",
        Some("running") => "Running, not Connected",
        Some("paused") => "Paused",
        Some("not-running") => "Not Running",
        _ => "Changing",
    }
}

fn gateway_rows(stats: &Value) -> Value {
    let member = &stats["member"];
    let senders: Vec<Value> = stats["senders"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[])
        .iter()
        .map(|s| {
            json!({
                "id": s["id"],
                "member": member,
                "remote_site": s["remote_site"],
                "type": if s["parallel"].as_bool() == Some(true) { "Parallel" } else { "Serial" },
                "status": gateway_status(s),
                "queued_events": s["queued_events"],
            })
        })
        .collect();
    json!({ "senders": senders, "receiver": stats["receiver"] })
}

/// Runs `route` against this server through `c`.
fn answer(
    c: &mut RespClient,
    route: Route,
    body: Vec<u8>,
    control: &crate::control::Control,
) -> Result<Answer, ApiError> {
    let call =
        |c: &mut RespClient, args: &[&[u8]]| c.call(args).map_err(|e| unreachable_server(&e));
    match route {
        Route::Member => Ok(json_answer(200, &stats(c)?)),
        Route::Config => Ok(json_answer(
            200,
            &json!({ "site_toml": crate::config::to_toml(&control.config()) }),
        )),
        Route::DiskStores => {
            let stores: Vec<Value> = control
                .disk_stores()
                .into_iter()
                .map(|(name, dir, senders)| {
                    json!({ "name": name, "directory": dir.display().to_string(), "gateway_senders": senders })
                })
                .collect();
            Ok(json_answer(200, &json!(stores)))
        }
        Route::Change { op, kind, name } => {
            let change = change_of(op, kind, name, &body)?;
            let summary = change.summary();
            control.change(change).map_err(control_error)?;
            Ok(json_answer(200, &json!({ "done": summary })))
        }
        Route::Metrics => Ok((
            200,
            "text/plain; version=0.0.4",
            metrics(&stats(c)?).into_bytes(),
        )),
        Route::Gateways => Ok(json_answer(200, &gateway_rows(&stats(c)?))),
        Route::SenderStatus(id) => {
            let st = stats(c)?;
            let rows = gateway_rows(&st);
            let found = rows["senders"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["id"] == id.as_str()).cloned());
            found.map(|s| json_answer(200, &s)).ok_or_else(|| {
                ApiError::new(
                    404,
                    format!("unknown gateway sender `{id}`"),
                    "`GET /v1/gateways` lists this server's senders",
                )
            })
        }
        Route::SenderOp { id, op } => {
            let mut args: Vec<&[u8]> = vec![b"STRAIT.SENDER", id.as_bytes()];
            match op {
                "start-clean" => args.extend([&b"START"[..], b"CLEAN"]),
                other => args.push(other.as_bytes()),
            }
            expect_ok(call(c, &args)?)?;
            let status = expect_ok(call(c, &[b"STRAIT.SENDER", id.as_bytes(), b"STATUS"])?)?;
            Ok(json_answer(200, &json!({ "id": id, "state": status })))
        }
        Route::ReceiverStatus => {
            let st = stats(c)?;
            if st["receiver"].is_null() {
                return Err(refused(b"ERR this server has no gateway receiver"));
            }
            Ok(json_answer(200, &st["receiver"]))
        }
        Route::ReceiverOp(op) => {
            expect_ok(call(c, &[b"STRAIT.RECEIVER", op.as_bytes()])?)?;
            let status = expect_ok(call(c, &[b"STRAIT.RECEIVER", b"STATUS"])?)?;
            Ok(json_answer(200, &json!({ "state": status })))
        }
        Route::Regions => Ok(json_answer(200, &stats(c)?["regions"])),
        Route::Get { region, key } => {
            expect_ok(call(c, &[b"REGION", region.as_bytes()])?)?;
            match call(c, &[b"GET", &key])? {
                Reply::Bulk(Some(v)) => Ok((200, "application/octet-stream", v)),
                Reply::Bulk(None) => Err(ApiError::new(
                    404,
                    format!(
                        "no entry `{}` in region `{region}`",
                        String::from_utf8_lossy(&key)
                    ),
                    "PUT it first",
                )),
                other => expect_ok(other).map(|_| (500, JSON, Vec::new())),
            }
        }
        Route::Put { region, key } => {
            expect_ok(call(c, &[b"REGION", region.as_bytes()])?)?;
            expect_ok(call(c, &[b"SET", &key, &body])?)?;
            Ok(json_answer(200, &json!({ "stored": true })))
        }
        Route::Remove { region, key } => {
            expect_ok(call(c, &[b"REGION", region.as_bytes()])?)?;
            match call(c, &[b"DEL", &key])? {
                Reply::Integer(n) => Ok(json_answer(200, &json!({ "removed": n > 0 }))),
                other => expect_ok(other).map(|_| (500, JSON, Vec::new())),
            }
        }
        Route::DeadLetters => {
            let listing = expect_ok(call(c, &[b"STRAIT.DEADLETTERS", b"LIST"])?)?;
            Ok(json_answer(200, &json!({ "listing": listing })))
        }
        Route::Replay(region) => {
            let mut args: Vec<&[u8]> = vec![b"STRAIT.DEADLETTERS", b"REPLAY"];
            if let Some(r) = &region {
                args.push(r.as_bytes());
            }
            let done = expect_ok(call(c, &args)?)?;
            Ok(json_answer(200, &json!({ "replayed": done })))
        }
    }
}

/// One Prometheus sample line.
fn sample(out: &mut String, name: &str, labels: &[(&str, String)], v: &Value) {
    let Some(v) = v.as_f64() else { return };
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        out.push_str(&l.join(","));
        out.push('}');
    }
    out.push_str(&format!(" {v}\n"));
}

/// `(metric name, STRAIT.STATS field, type, help)` of each sender figure.
const SENDER_METRICS: &[(&str, &str, &str, &str)] = &[
    (
        "strait_sender_queued_events",
        "queued_events",
        "gauge",
        "Events in the sender's queues",
    ),
    (
        "strait_sender_queued_bytes",
        "queued_bytes",
        "gauge",
        "Bytes of events in the sender's queues",
    ),
    (
        "strait_sender_memory_events",
        "memory_events",
        "gauge",
        "Queued events held in memory",
    ),
    (
        "strait_sender_memory_bytes",
        "memory_bytes",
        "gauge",
        "Bytes of queued events held in memory",
    ),
    (
        "strait_sender_disk_events",
        "disk_events",
        "gauge",
        "Queued events held in segment files",
    ),
    (
        "strait_sender_disk_bytes",
        "disk_bytes",
        "gauge",
        "Bytes of queued events held in segment files",
    ),
    (
        "strait_sender_segments",
        "segments",
        "gauge",
        "Segment files of the sender's queues",
    ),
    (
        "strait_sender_events_queued_total",
        "events_queued_total",
        "counter",
        "Events queued since start",
    ),
    (
        "strait_sender_events_distributed_total",
        "distributed",
        "counter",
        "Events sent to the remote site",
    ),
    (
        "strait_sender_events_conflated_total",
        "conflated",
        "counter",
        "Events replaced by a later update of the same key",
    ),
    (
        "strait_sender_events_possible_duplicate_total",
        "possible_duplicates",
        "counter",
        "Events resent marked possible-duplicate",
    ),
    (
        "strait_sender_events_dead_lettered_total",
        "dead_lettered",
        "counter",
        "Events the remote site kept in its dead-letter log",
    ),
    (
        "strait_sender_events_dropped_not_running_total",
        "dropped_not_running",
        "counter",
        "Writes not queued because the sender was not running",
    ),
    (
        "strait_sender_events_over_alert_threshold_total",
        "over_alert_threshold",
        "counter",
        "Events older than alert-threshold when sent",
    ),
    (
        "strait_sender_batches_total",
        "batches",
        "counter",
        "Batches sent",
    ),
    (
        "strait_sender_connected_shards",
        "connected_shards",
        "gauge",
        "Shards whose dispatcher is connected",
    ),
];

/// `(metric name, field, type, help)` of each receiver figure.
const RECEIVER_METRICS: &[(&str, &str, &str, &str)] = &[
    (
        "strait_receiver_events_applied_total",
        "applied",
        "counter",
        "Events applied",
    ),
    (
        "strait_receiver_events_duplicate_total",
        "duplicates",
        "counter",
        "Events dropped as already applied",
    ),
    (
        "strait_receiver_events_conflict_total",
        "conflicts",
        "counter",
        "Events that lost the conflict rule",
    ),
    (
        "strait_receiver_events_dead_lettered_total",
        "dead_lettered",
        "counter",
        "Events written to the dead-letter log",
    ),
    (
        "strait_receiver_events_cross_shard_total",
        "cross_shard_events",
        "counter",
        "Events applied on another shard than the one that received them",
    ),
    (
        "strait_receiver_connections",
        "connections",
        "gauge",
        "Open sender connections",
    ),
    (
        "strait_receiver_queue_refusals_total",
        "queue_refusals",
        "counter",
        "Batches refused because a queue they had to go to was full",
    ),
];

/// The Prometheus text exposition of a `STRAIT.STATS` document.
pub fn metrics(stats: &Value) -> String {
    let mut out = String::new();
    let member = stats["member"].as_str().unwrap_or("").to_string();
    let site = stats["site"].to_string();
    let base = [("member", member.clone()), ("site", site.clone())];
    out.push_str("# HELP strait_up The server answers.\n# TYPE strait_up gauge\n");
    sample(&mut out, "strait_up", &base, &json!(1));
    out.push_str("# HELP strait_clients Open client connections.\n# TYPE strait_clients gauge\n");
    sample(&mut out, "strait_clients", &base, &stats["clients"]);
    out.push_str(
        "# HELP strait_region_entries Live entries.\n# TYPE strait_region_entries gauge\n",
    );
    let empty = Vec::new();
    for r in stats["regions"].as_array().unwrap_or(&empty) {
        let mut labels = base.to_vec();
        labels.push(("region", r["name"].as_str().unwrap_or("").to_string()));
        sample(&mut out, "strait_region_entries", &labels, &r["keys"]);
    }
    let senders = stats["senders"].as_array().unwrap_or(&empty);
    let sender_labels = |s: &Value| {
        let mut l = base.to_vec();
        l.push(("sender", s["id"].as_str().unwrap_or("").to_string()));
        l.push(("remote_site", s["remote_site"].to_string()));
        l
    };
    for (name, field, kind, help) in SENDER_METRICS {
        out.push_str(&format!("# HELP {name} {help}.\n# TYPE {name} {kind}\n"));
        for s in senders {
            sample(&mut out, name, &sender_labels(s), &s[*field]);
        }
    }
    out.push_str("# HELP strait_sender_state 1 for the sender's current state.\n# TYPE strait_sender_state gauge\n");
    for s in senders {
        for state in ["running", "paused", "not-running"] {
            let mut l = sender_labels(s);
            l.push(("state", state.to_string()));
            let on = s["state"].as_str() == Some(state);
            sample(&mut out, "strait_sender_state", &l, &json!(u8::from(on)));
        }
    }
    out.push_str("# HELP strait_sender_batch_rtt_seconds Batch round trip, send to ack.\n# TYPE strait_sender_batch_rtt_seconds summary\n");
    for s in senders {
        quantiles(
            &mut out,
            "strait_sender_batch_rtt_seconds",
            &sender_labels(s),
            &s["batch_rtt_us"],
        );
    }
    let r = &stats["receiver"];
    if r.is_object() {
        for (name, field, kind, help) in RECEIVER_METRICS {
            out.push_str(&format!("# HELP {name} {help}.\n# TYPE {name} {kind}\n"));
            sample(&mut out, name, &base, &r[*field]);
        }
        out.push_str("# HELP strait_receiver_running 1 while the receiver runs.\n# TYPE strait_receiver_running gauge\n");
        let on = r["state"].as_str() == Some("running");
        sample(
            &mut out,
            "strait_receiver_running",
            &base,
            &json!(u8::from(on)),
        );
        out.push_str("# HELP strait_receiver_apply_lag_seconds From the write at its origin site to its apply here.\n# TYPE strait_receiver_apply_lag_seconds summary\n");
        quantiles(
            &mut out,
            "strait_receiver_apply_lag_seconds",
            &base,
            &r["apply_lag_us"],
        );
    }
    out
}

/// Summary lines from a `{count, sum_us, p50, p99, p999}` histogram document (microseconds).
fn quantiles(out: &mut String, name: &str, labels: &[(&str, String)], h: &Value) {
    if !h.is_object() {
        return;
    }
    for (q, field) in [("0.5", "p50"), ("0.99", "p99"), ("0.999", "p999")] {
        let mut l = labels.to_vec();
        l.push(("quantile", q.to_string()));
        let secs = h[field].as_f64().map(|us| us / 1e6);
        sample(out, name, &l, &json!(secs));
    }
    let sum = h["sum_us"].as_f64().map(|us| us / 1e6);
    sample(out, &format!("{name}_sum"), labels, &json!(sum));
    sample(out, &format!("{name}_count"), labels, &h["count"]);
}

/// Why the admin API did not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "http-service-port {addr} is in use by another process; give this server another one (0 turns the admin API off)"
    )]
    PortInUse { addr: SocketAddr },
    #[error("the admin API cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The running admin API.
#[derive(Debug)]
pub struct AdminHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
}

impl AdminHandle {
    /// Waits for the workers, which end once `stop` is set (a worker held by a stalled client
    /// ends when that client's request does).
    pub fn join(self) {
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// Starts the admin API on `at`, answering for the server whose client port is `client` and
/// whose run-time changes `control` makes.
pub fn start(
    at: SocketAddr,
    client: SocketAddr,
    control: Arc<crate::control::Control>,
    stop: Arc<AtomicBool>,
) -> Result<AdminHandle, AdminError> {
    let listener = std::net::TcpListener::bind(at).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            AdminError::PortInUse { addr: at }
        } else {
            AdminError::Listen {
                addr: at,
                source: e,
            }
        }
    })?;
    let addr = listener
        .local_addr()
        .map_err(|source| AdminError::Listen { addr: at, source })?;
    let server =
        tiny_http::Server::from_listener(listener, None).map_err(|e| AdminError::Listen {
            addr,
            source: std::io::Error::other(e.to_string()),
        })?;
    let server = Arc::new(server);
    let mut workers = Vec::new();
    for i in 0..ADMIN_WORKERS {
        let (server, worker_stop, control) = (server.clone(), stop.clone(), control.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("admin-{i}"))
            .spawn(move || run_worker(&server, client, &control, &worker_stop));
        match spawned {
            Ok(w) => workers.push(w),
            Err(e) => {
                stop.store(true, Ordering::SeqCst);
                return Err(AdminError::Listen { addr, source: e });
            }
        }
    }
    Ok(AdminHandle { addr, workers })
}

fn run_worker(
    server: &tiny_http::Server,
    client: SocketAddr,
    control: &crate::control::Control,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        let mut request = match server.recv_timeout(Duration::from_millis(ADMIN_POLL_MS)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(_) => continue,
        };
        let (status, kind, body) = match handle(&mut request, client, control) {
            Ok(a) => a,
            Err(e) => (e.status, JSON, e.body().into_bytes()),
        };
        let mut response =
            tiny_http::Response::from_data(body).with_status_code(tiny_http::StatusCode(status));
        if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], kind.as_bytes()) {
            response.add_header(h);
        }
        // A client that went away is its own problem.
        let _ = request.respond(response);
    }
}

fn handle(
    request: &mut tiny_http::Request,
    client: SocketAddr,
    control: &crate::control::Control,
) -> Result<Answer, ApiError> {
    let route = route(request.method().as_str(), request.url())?;
    let mut body = Vec::new();
    if request.body_length().unwrap_or(0) > ADMIN_BODY_BYTES_MAX {
        return Err(ApiError::new(
            413,
            format!("the body is larger than {ADMIN_BODY_BYTES_MAX} bytes"),
            "send a smaller value",
        ));
    }
    request
        .as_reader()
        .take(ADMIN_BODY_BYTES_MAX as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::new(400, format!("reading the body: {e}"), "send it again"))?;
    if body.len() > ADMIN_BODY_BYTES_MAX {
        return Err(ApiError::new(
            413,
            format!("the body is larger than {ADMIN_BODY_BYTES_MAX} bytes"),
            "send a smaller value",
        ));
    }
    // A connection per request: an idle one held open would make a stopping server wait
    // for it.
    let mut c = RespClient::connect(client).map_err(|e| unreachable_server(&e))?;
    answer(&mut c, route, body, control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_and_bad_ones_say_why() {
        assert_eq!(route("GET", "/v1/gateways"), Ok(Route::Gateways));
        assert_eq!(route("GET", "/metrics"), Ok(Route::Metrics));
        assert_eq!(
            route("POST", "/v1/gateway-senders/to%202/start?clean-queues=true"),
            Ok(Route::SenderOp {
                id: "to 2".into(),
                op: "start-clean"
            })
        );
        assert_eq!(
            route("GET", "/v1/regions/orders/entries/a%00b"),
            Ok(Route::Get {
                region: "orders".into(),
                key: b"a\0b".to_vec()
            })
        );
        assert_eq!(
            route("POST", "/v1/dead-letters/replay?region=customers"),
            Ok(Route::Replay(Some("customers".into())))
        );
        assert_eq!(route("GET", "/v1/nothing").unwrap_err().status, 404);
        assert_eq!(
            route("POST", "/v1/gateway-senders/to2/explode")
                .unwrap_err()
                .error,
            "unknown gateway sender operation `explode`"
        );
        assert_eq!(
            route("PATCH", "/v1/regions/r/entries/k")
                .unwrap_err()
                .status,
            405
        );
        assert_eq!(
            route("GET", "/v1/regions/r/entries/%zz")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            route("POST", "/v1/gateway-senders/to2/start?clean-queues=maybe")
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn metrics_name_every_sender_and_receiver_figure() {
        let stats = json!({
            "member": "s1", "site": 1, "clients": 2,
            "regions": [{"name": "orders", "buckets": 113, "keys": 5}],
            "senders": [{"id": "to2", "remote_site": 2, "parallel": true, "state": "paused",
                "queued_events": 7, "queued_bytes": 700, "memory_events": 7, "memory_bytes": 700,
                "disk_events": 0, "disk_bytes": 0, "segments": 0, "events_queued_total": 9,
                "distributed": 2, "conflated": 0, "possible_duplicates": 1, "dead_lettered": 0,
                "dropped_not_running": 0, "over_alert_threshold": 0, "batches": 1,
                "connected_shards": 2,
                "batch_rtt_us": {"count": 1, "sum_us": 1500, "p50": 1500, "p99": 1500, "p999": 1500}}],
            "receiver": {"state": "running", "applied": 3, "duplicates": 0, "conflicts": 0,
                "dead_lettered": 0, "cross_shard_events": 0, "connections": 1, "queue_refusals": 0,
                "apply_lag_us": {"count": 3, "sum_us": 3000, "p50": 1000, "p99": 1000, "p999": 1000}}
        });
        let text = metrics(&stats);
        for (name, _, _, _) in SENDER_METRICS.iter().chain(RECEIVER_METRICS) {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        assert!(text.contains(
            "strait_sender_queued_events{member=\"s1\",site=\"1\",sender=\"to2\",remote_site=\"2\"} 7\n"
        ));
        assert!(text.contains(
            "strait_sender_state{member=\"s1\",site=\"1\",sender=\"to2\",remote_site=\"2\",state=\"paused\"} 1\n"
        ));
        assert!(text.contains(
            "strait_sender_batch_rtt_seconds{member=\"s1\",site=\"1\",sender=\"to2\",remote_site=\"2\",quantile=\"0.99\"} 0.0015\n"
        ));
        assert!(
            text.contains("strait_receiver_events_applied_total{member=\"s1\",site=\"1\"} 3\n")
        );
        assert!(
            text.contains("strait_receiver_apply_lag_seconds_count{member=\"s1\",site=\"1\"} 3\n")
        );
    }

    #[test]
    fn gateway_rows_use_geodes_status_words() {
        let s =
            |state: &str, connected: u64| json!({"state": state, "connected_shards": connected});
        assert_eq!(gateway_status(&s("running", 2)), "Running and Connected");
        assert_eq!(gateway_status(&s("running", 0)), "Running, not Connected");
        assert_eq!(gateway_status(&s("paused", 2)), "Paused");
        assert_eq!(gateway_status(&s("not-running", 0)), "Not Running");
    }
}
