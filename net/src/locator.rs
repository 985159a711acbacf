//! The locator protocol: HTTP/1.1 with JSON bodies on the locator port (10334 by default).
//! `docs/locator.md` has every endpoint with examples.
//!
//! | endpoint | body | reply |
//! |---|---|---|
//! | `POST /v1/servers` | [`RegisterRequest`] | [`RegisterReply`] |
//! | `PUT /v1/servers/{name}/heartbeat` | [`HeartbeatRequest`] | [`HeartbeatReply`]; 404 [`ErrorKind::UnknownServer`]: register again |
//! | `DELETE /v1/servers/{name}` | none | 204 |
//! | `GET /v1/servers` | none | [`ServersReply`] |
//! | `GET /v1/servers/least-loaded` | none | [`ServerView`]; 404 [`ErrorKind::NoServers`] |
//! | `GET /v1/status` | none | [`StatusReply`] |
//! | `POST /v1/exchange` | [`ExchangeRequest`] | [`SitesReply`]: the receiving locator's map |
//! | `GET /v1/sites` | none | [`SitesReply`] |
//! | `GET /v1/sites/{id}/receivers` | none | [`ReceiversReply`]; 404 [`ErrorKind::SiteUnknown`] |
//!
//! Every refusal is an [`ErrorReply`] with the status of its [`ErrorKind`]. [`route`] maps a
//! method and a path to a [`Route`]; member names in paths are percent-encoded with
//! [`encode_segment`].
//!
//! The exchange between sites: a locator with a `distributed-system-id` posts an
//! [`ExchangeRequest`] (its site, itself, its whole map of sites) to every locator of another
//! site it knows, and merges the [`SitesReply`] it gets back. Ages in a map are relative
//! (milliseconds since the entry's own site vouched for it, when the map was sent), because
//! the two machines' clocks differ.

use serde::{Deserialize, Serialize};

/// Largest request body a locator reads; a larger one is refused with 413.
pub const BODY_BYTES_MAX: usize = 64 << 10;
/// Largest `POST /v1/exchange` body: a map of many sites, each with many receivers.
pub const EXCHANGE_BODY_BYTES_MAX: usize = 4 << 20;
/// The path of the server collection.
pub const SERVERS_PATH: &str = "/v1/servers";
/// The path of the exchange between sites' locators.
pub const EXCHANGE_PATH: &str = "/v1/exchange";
/// The path of the map of sites.
pub const SITES_PATH: &str = "/v1/sites";
const _: () = assert!(BODY_BYTES_MAX <= EXCHANGE_BODY_BYTES_MAX);

/// The largest body a request to `target` may have.
pub fn body_bytes_max(target: &str) -> usize {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path.trim_end_matches('/') == EXCHANGE_PATH {
        EXCHANGE_BODY_BYTES_MAX
    } else {
        BODY_BYTES_MAX
    }
}

/// A host name or address and a port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// A gateway receiver's endpoint and the buckets it serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverEndpoint {
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub buckets: Vec<u16>,
}

/// `POST /v1/servers`: a server registers (or registers again).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Member name, unique within the site.
    pub name: String,
    /// Where Redis-protocol clients connect.
    pub client: Endpoint,
    #[serde(default)]
    pub receivers: Vec<ReceiverEndpoint>,
    /// Open client connections.
    #[serde(default)]
    pub load: u32,
    /// Where its admin API listens, when it has one (`strait ... --locator` reaches servers
    /// through it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Endpoint>,
}

/// The reply to a register: the site and how often to heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterReply {
    pub distributed_system_id: Option<u8>,
    pub member_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
}

/// `PUT /v1/servers/{name}/heartbeat`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub load: u32,
}

/// The reply to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatReply {
    pub heartbeat_interval_ms: u64,
}

/// A server as the directory holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerView {
    pub name: String,
    pub client: Endpoint,
    pub receivers: Vec<ReceiverEndpoint>,
    pub load: u32,
    /// Milliseconds since the locator last heard from it.
    pub last_heard_ms_ago: u64,
    /// Its admin API, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Endpoint>,
}

/// `GET /v1/servers`: the site's directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServersReply {
    pub distributed_system_id: Option<u8>,
    pub locators: Vec<Endpoint>,
    /// Ordered by name.
    pub servers: Vec<ServerView>,
}

/// `GET /v1/status`: who this locator is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReply {
    pub name: String,
    /// The address the locator advertises (`hostname-for-clients`, else its bind address).
    pub address: Endpoint,
    pub distributed_system_id: Option<u8>,
    pub remote_locators: Vec<Endpoint>,
    pub member_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub servers: usize,
}

/// A locator in a site map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteLocator {
    /// Its member name, unique within its site; a new address under the same name replaces
    /// the old one.
    pub name: String,
    /// Its advertised address: `hostname-for-clients`, else its bind address, else the host
    /// name.
    pub address: Endpoint,
    /// Milliseconds since its own site vouched for it, when the map was made (0: the sender
    /// is, or serves, that site).
    pub age_ms: u64,
}

/// A server with gateway receivers in a site map (servers without receivers are left out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteServer {
    /// Its member name, unique within its site.
    pub name: String,
    /// Its receivers' endpoints (`hostname-for-senders`, else bind address) and buckets.
    pub receivers: Vec<ReceiverEndpoint>,
    /// Milliseconds since its own site vouched for it, when the map was made.
    pub age_ms: u64,
}

/// One site in a site map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteView {
    pub distributed_system_id: u8,
    /// Ordered by name.
    pub locators: Vec<SiteLocator>,
    /// Ordered by name.
    pub servers: Vec<SiteServer>,
}

/// `POST /v1/exchange`: a locator of another site sends what it knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    /// The sender's site.
    pub distributed_system_id: u8,
    /// The sending locator: its member name and advertised address.
    pub locator: SiteLocator,
    /// Everything the sender knows, its own site first-hand (age 0) and others relayed.
    pub sites: Vec<SiteView>,
}

/// `GET /v1/sites`, and the reply to `POST /v1/exchange`: everything a locator knows of every
/// site, its own included, ordered by site id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitesReply {
    /// The answering locator's site.
    pub distributed_system_id: Option<u8>,
    pub sites: Vec<SiteView>,
}

/// `GET /v1/sites/{id}/receivers`: where a sender reaches site `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiversReply {
    pub distributed_system_id: u8,
    /// The site's locators' advertised addresses, ordered by name.
    pub locators: Vec<Endpoint>,
    /// Every gateway-receiver endpoint of the site's servers, ordered by server name; empty
    /// when the site is known but none of its servers runs a receiver yet.
    pub receivers: Vec<ReceiverEndpoint>,
}

/// What went wrong, and so the HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Malformed JSON, a missing or unknown field, an invalid name or address: 400.
    BadRequest,
    /// A heartbeat or deregister for a server the directory does not hold: 404.
    UnknownServer,
    /// `least-loaded` with no server registered: 404.
    NoServers,
    /// No such endpoint: 404.
    NotFound,
    /// The endpoint exists, the method does not: 405.
    MethodNotAllowed,
    /// A body over [`BODY_BYTES_MAX`]: 413.
    PayloadTooLarge,
    /// The directory holds as many servers as it may: 503.
    DirectoryFull,
    /// `GET /v1/sites/{id}/receivers` for a site this locator does not know (yet): 404.
    SiteUnknown,
}

impl ErrorKind {
    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::UnknownServer
            | ErrorKind::NoServers
            | ErrorKind::NotFound
            | ErrorKind::SiteUnknown => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::DirectoryFull => 503,
        }
    }
}

/// The body of every refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    pub error: ErrorKind,
    pub message: String,
}

impl ErrorReply {
    pub fn new(error: ErrorKind, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            error,
            message: message.into(),
        }
    }
}

/// A request's endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Register,
    Heartbeat {
        name: String,
    },
    Deregister {
        name: String,
    },
    Servers,
    LeastLoaded,
    Status,
    Exchange,
    Sites,
    SiteReceivers {
        site: u8,
    },
    /// `GET /metrics`: Prometheus text (the only answer that is not JSON).
    Metrics,
}

/// The endpoint of `method` on `target` (a path, with or without a query, which is ignored).
pub fn route(method: &str, target: &str) -> Result<Route, ErrorReply> {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let allowed = |ok: bool, route: Route, methods: &str| {
        if ok {
            Ok(route)
        } else {
            Err(ErrorReply::new(
                ErrorKind::MethodNotAllowed,
                format!("{method} is not allowed on {path}: use {methods}"),
            ))
        }
    };
    match segments[..] {
        ["", "v1", "status"] => allowed(method == "GET", Route::Status, "GET"),
        ["", "v1", "servers"] => match method {
            "GET" => Ok(Route::Servers),
            _ => allowed(method == "POST", Route::Register, "GET or POST"),
        },
        ["", "v1", "servers", "least-loaded"] => {
            allowed(method == "GET", Route::LeastLoaded, "GET")
        }
        ["", "v1", "servers", name] => {
            let name = decode_segment(name)?;
            allowed(method == "DELETE", Route::Deregister { name }, "DELETE")
        }
        ["", "v1", "servers", name, "heartbeat"] => {
            let name = decode_segment(name)?;
            allowed(method == "PUT", Route::Heartbeat { name }, "PUT")
        }
        ["", "v1", "exchange"] => allowed(method == "POST", Route::Exchange, "POST"),
        ["", "v1", "sites"] => allowed(method == "GET", Route::Sites, "GET"),
        ["", "metrics"] => allowed(method == "GET", Route::Metrics, "GET"),
        ["", "v1", "sites", id, "receivers"] => {
            let site = match id.parse::<u8>() {
                Ok(site) if site != 0 => site,
                _ => {
                    return Err(ErrorReply::new(
                        ErrorKind::BadRequest,
                        format!("`{id}` is not a distributed-system-id (1 to 255)"),
                    ));
                }
            };
            allowed(method == "GET", Route::SiteReceivers { site }, "GET")
        }
        _ => Err(ErrorReply::new(
            ErrorKind::NotFound,
            format!("no endpoint at {path}: see docs/locator.md"),
        )),
    }
}

/// Percent-encodes a member name for a path segment (every byte but `A-Z a-z 0-9 - . _ ~`).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded path segment into UTF-8.
pub fn decode_segment(s: &str) -> Result<String, ErrorReply> {
    let bad = || {
        ErrorReply::new(
            ErrorKind::BadRequest,
            format!("`{s}` is not a percent-encoded UTF-8 member name"),
        )
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Parses a JSON request body, refusing it with a message that names what is wrong.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ErrorReply> {
    serde_json::from_slice(body).map_err(|e| {
        ErrorReply::new(
            ErrorKind::BadRequest,
            format!(
                "the request body is not a valid {}: {e}",
                short_type_name::<T>()
            ),
        )
    })
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("POST", "/v1/servers"), Ok(Route::Register));
        assert_eq!(route("GET", "/v1/servers/"), Ok(Route::Servers));
        assert_eq!(route("GET", "/v1/servers?x=1"), Ok(Route::Servers));
        assert_eq!(
            route("GET", "/v1/servers/least-loaded"),
            Ok(Route::LeastLoaded)
        );
        assert_eq!(route("GET", "/v1/status"), Ok(Route::Status));
        assert_eq!(
            route("PUT", "/v1/servers/ny%201/heartbeat"),
            Ok(Route::Heartbeat {
                name: "ny 1".into()
            })
        );
        assert_eq!(
            route("DELETE", "/v1/servers/ny-1"),
            Ok(Route::Deregister {
                name: "ny-1".into()
            })
        );
    }

    #[test]
    fn exchange_routes_and_limits() {
        assert_eq!(route("POST", "/v1/exchange"), Ok(Route::Exchange));
        assert_eq!(route("GET", "/v1/sites"), Ok(Route::Sites));
        assert_eq!(
            route("GET", "/v1/sites/3/receivers"),
            Ok(Route::SiteReceivers { site: 3 })
        );
        assert_eq!(
            route("GET", "/v1/exchange").unwrap_err().error,
            ErrorKind::MethodNotAllowed
        );
        for bad in ["0", "256", "x", "-1"] {
            let e = route("GET", &format!("/v1/sites/{bad}/receivers")).unwrap_err();
            assert_eq!(e.error, ErrorKind::BadRequest, "{bad}");
            assert!(e.message.contains("distributed-system-id"), "{}", e.message);
        }
        assert_eq!(ErrorKind::SiteUnknown.status(), 404);
        assert_eq!(
            serde_json::to_string(&ErrorKind::SiteUnknown).unwrap(),
            r#""site-unknown""#
        );
        assert_eq!(body_bytes_max("/v1/exchange"), EXCHANGE_BODY_BYTES_MAX);
        assert_eq!(body_bytes_max("/v1/servers"), BODY_BYTES_MAX);
        let r: ExchangeRequest = parse_body(
            br#"{"distributed_system_id":2,"locator":{"name":"l","address":{"host":"h","port":1},"age_ms":0},
                 "sites":[{"distributed_system_id":2,"locators":[],"servers":[{"name":"s","receivers":[{"host":"h","port":5000}],"age_ms":7}]}]}"#,
        )
        .unwrap();
        assert_eq!(r.sites[0].servers[0].age_ms, 7);
    }

    #[test]
    fn wrong_methods_and_paths_are_refused() {
        let e = route("PUT", "/v1/servers").unwrap_err();
        assert_eq!(
            (e.error, e.error.status()),
            (ErrorKind::MethodNotAllowed, 405)
        );
        assert!(e.message.contains("GET or POST"), "{}", e.message);
        assert_eq!(
            route("POST", "/v1/status").unwrap_err().error,
            ErrorKind::MethodNotAllowed
        );
        assert_eq!(
            route("GET", "/v1/servers/a/heartbeat").unwrap_err().error,
            ErrorKind::MethodNotAllowed
        );
        for path in ["/", "/v2/servers", "/v1/servers/a/b/c", "/v1"] {
            let e = route("GET", path).unwrap_err();
            assert_eq!(
                (e.error, e.error.status()),
                (ErrorKind::NotFound, 404),
                "{path}"
            );
        }
        let e = route("DELETE", "/v1/servers/%zz").unwrap_err();
        assert_eq!((e.error, e.error.status()), (ErrorKind::BadRequest, 400));
        assert!(route("DELETE", "/v1/servers/%4").is_err());
        assert!(route("DELETE", "/v1/servers/%ff").is_err());
    }

    #[test]
    fn segments_round_trip() {
        for name in ["ny-1", "a b/c%d", "größe", "~._-"] {
            let enc = encode_segment(name);
            assert!(!enc.contains('/') && !enc.contains(' '));
            assert_eq!(decode_segment(&enc), Ok(name.to_string()));
        }
        assert_eq!(encode_segment("a b"), "a%20b");
    }

    #[test]
    fn bodies_parse_and_refuse_with_a_reason() {
        let r: RegisterRequest =
            parse_body(br#"{"name":"a","client":{"host":"h","port":40404}}"#).unwrap();
        assert_eq!((r.load, r.receivers.len()), (0, 0));
        let e = parse_body::<RegisterRequest>(b"{not json").unwrap_err();
        assert_eq!(e.error, ErrorKind::BadRequest);
        assert!(e.message.contains("RegisterRequest"), "{}", e.message);
        let e = parse_body::<RegisterRequest>(br#"{"name":"a"}"#).unwrap_err();
        assert!(
            e.message.contains("missing field `client`"),
            "{}",
            e.message
        );
        let e = parse_body::<HeartbeatRequest>(br#"{"load":1,"extra":2}"#).unwrap_err();
        assert!(e.message.contains("unknown field `extra`"), "{}", e.message);
        let e = parse_body::<HeartbeatRequest>(br#"{"load":-1}"#).unwrap_err();
        assert!(e.message.contains("invalid value"), "{}", e.message);
    }

    #[test]
    fn errors_serialise_in_kebab_case() {
        let json = serde_json::to_string(&ErrorReply::new(ErrorKind::NoServers, "none")).unwrap();
        assert_eq!(json, r#"{"error":"no-servers","message":"none"}"#);
    }
}
