//! Geode's own files: a server's `cache.xml` and `gemfire.properties` read into the same
//! [`SiteConfig`] a `site.toml` gives, and a locator's `gemfire.properties` into its
//! [`LocatorConfig`], so a Geode user brings the files they have.
//!
//! | item | what it is |
//! |---|---|
//! | [`load_server`] / [`parse_server`] | `cache.xml` and/or `gemfire.properties` → a [`SiteConfig`], checked by the same rules as `site.toml` |
//! | [`load_locator`] / [`parse_locator`] | `gemfire.properties` → the settings of a [`LocatorConfig`] it names |
//! | [`Warning`] | something the files say that Strait does not act on, with the file and line |
//!
//! Parsed low, validated high, as [`crate::config`]: the XML (roxmltree) and the properties
//! (java-properties) are read into `config`'s raw form, each element's span a byte range of the
//! `cache.xml`, and `config::validate` checks it, so a value out of range is refused with the
//! same words as in `site.toml`, at the line of the element. A value that is not a number,
//! boolean or address, or a reference to nothing (`refid`, `disk-store-name`), is refused here
//! at the line of its attribute. Every element, attribute and property Strait does not act on
//! is a [`Warning`]; `docs/configuration.md` ("Geode's files") has the whole mapping.

use crate::config::{
    self, ConfigError, HostPort, OrderPolicy, RawDiskStore, RawFile, RawReceiver, RawRegion,
    RawSender, RawServer, RegionType, SiteConfig,
};
use crate::locator::LocatorConfig;
use java_properties::{LineContent, PropertiesIter};
use roxmltree::{Attribute, Document, Node, ParsingOptions};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use strait_engine::locator::{MEMBER_TIMEOUT_MS_MAX, MEMBER_TIMEOUT_MS_MIN};
use strait_queue::ids::SiteId;
use toml::Spanned;

/// The namespaces of Geode's and GemFire's cache schemas; elements in any other namespace (an
/// extension such as Lucene or JDBC) are warned about as foreign.
pub const CACHE_NAMESPACES: [&str; 2] = [
    "http://geode.apache.org/schema/cache",
    "http://schema.pivotal.io/gemfire/cache",
];
/// Longest chain of `refid`s from a region to the shortcut it ends in.
pub const REFID_DEPTH_MAX: usize = 16;
/// The disk store a persistent sender without `disk-store-name` uses (Geode's).
pub const DEFAULT_DISK_STORE: &str = "DEFAULT";
const XSI_NAMESPACE: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Something in a Geode file that Strait does not act on; the rest of the file is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A configuration read from Geode's files, and what in them was not used.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded<T> {
    pub config: T,
    /// Each once, by file and line.
    pub warnings: Vec<Warning>,
}

/// One file's name (for messages) and text.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: String::new(),
        reason: format!("cannot read the file: {e}"),
    })
}

/// Reads a server's `cache.xml` and `gemfire.properties` (either may be absent).
pub fn load_server(
    cache_xml: Option<&Path>,
    properties: Option<&Path>,
) -> Result<Loaded<SiteConfig>, ConfigError> {
    let xml_text = cache_xml.map(read).transpose()?;
    let props_text = properties.map(read).transpose()?;
    parse_server(
        cache_xml
            .zip(xml_text.as_deref())
            .map(|(path, text)| Source { path, text }),
        properties
            .zip(props_text.as_deref())
            .map(|(path, text)| Source { path, text }),
    )
}

/// Reads a locator's `gemfire.properties` into `config`: the settings it names replace
/// `config`'s, the others are kept.
pub fn load_locator(
    properties: &Path,
    config: &mut LocatorConfig,
) -> Result<Vec<Warning>, ConfigError> {
    let text = read(properties)?;
    parse_locator(
        Source {
            path: properties,
            text: &text,
        },
        config,
    )
}

// ---- gemfire.properties ----------------------------------------------------------------

struct Property {
    key: String,
    value: String,
    line: usize,
}

struct Props<'a> {
    path: &'a Path,
    list: Vec<Property>,
}

impl<'a> Props<'a> {
    /// Reads the properties (Java's format: `key=value`, `key: value` or `key value`, `#` and
    /// `!` comments, `\` continuations and escapes); a key set twice keeps its last value, as
    /// Java's `Properties` does, with a warning.
    fn read(src: Source<'a>, warnings: &mut Vec<Warning>) -> Result<Props<'a>, ConfigError> {
        let mut list: Vec<Property> = Vec::new();
        for line in PropertiesIter::new(src.text.as_bytes()) {
            let line = line.map_err(|e| ConfigError {
                file: src.path.to_path_buf(),
                line: e.line_number(),
                key: String::new(),
                reason: e.to_string(),
            })?;
            let number = line.line_number();
            if let LineContent::KVPair(key, value) = line.consume_content() {
                if let Some(i) = list.iter().position(|p| p.key == key) {
                    let earlier = list.remove(i);
                    warnings.push(Warning {
                        file: src.path.to_path_buf(),
                        line: Some(earlier.line),
                        message: format!(
                            "`{key}` is set again at line {number}; the last value is used"
                        ),
                    });
                }
                list.push(Property {
                    key,
                    value: value.trim().to_string(),
                    line: number,
                });
            }
        }
        Ok(Props {
            path: src.path,
            list,
        })
    }

    fn err(&self, p: &Property, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: Some(p.line),
            key: p.key.clone(),
            reason: reason.into(),
        }
    }

    fn warn(&self, warnings: &mut Vec<Warning>, p: &Property, message: impl Into<String>) {
        warnings.push(Warning {
            file: self.path.to_path_buf(),
            line: Some(p.line),
            message: message.into(),
        });
    }

    /// `distributed-system-id`: Geode's −1 (unset) or 1–255.
    fn site_id(&self, p: &Property) -> Result<Option<SiteId>, ConfigError> {
        match p.value.parse::<i64>() {
            Ok(-1) => Ok(None),
            Ok(v @ 1..=255) => Ok(Some(SiteId(v as u8))),
            Ok(v) => Err(self.err(p, format!("{v} is out of range (-1 for none, or 1..=255)"))),
            Err(_) => Err(self.err(p, format!("`{}` is not a number", p.value))),
        }
    }

    fn ip(&self, p: &Property) -> Result<Option<IpAddr>, ConfigError> {
        if p.value.is_empty() {
            return Ok(None);
        }
        p.value
            .parse()
            .map(Some)
            .map_err(|_| self.err(p, format!("`{}` is not an IP address", p.value)))
    }

    /// A comma-separated list of `host[port]` (or `host:port`).
    fn host_ports(&self, p: &Property) -> Result<Vec<HostPort>, ConfigError> {
        p.value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| HostPort::parse(s).map_err(|r| self.err(p, r)))
            .collect()
    }

    /// `mcast-port=0` is what every WAN configuration has (multicast off) and what Strait
    /// does; anything else is warned about like any unsupported property.
    fn warn_unsupported(&self, warnings: &mut Vec<Warning>, p: &Property) {
        if p.key == "mcast-port" && p.value == "0" {
            return;
        }
        self.warn(
            warnings,
            p,
            format!("property `{}` is not supported; ignored", p.key),
        );
    }
}

/// What a server takes from `gemfire.properties`.
#[derive(Default)]
struct ServerProps {
    name: Option<String>,
    site: Option<SiteId>,
    locators: Vec<HostPort>,
    start_locator: Option<HostPort>,
    bind_address: Option<IpAddr>,
    http_service_port: Option<i64>,
    http_service_bind_address: Option<IpAddr>,
}

fn server_props(src: Source<'_>, warnings: &mut Vec<Warning>) -> Result<ServerProps, ConfigError> {
    let props = Props::read(src, warnings)?;
    let mut out = ServerProps::default();
    for p in &props.list {
        match p.key.as_str() {
            "name" => out.name = Some(p.value.clone()).filter(|n| !n.is_empty()),
            "distributed-system-id" => out.site = props.site_id(p)?,
            "locators" => out.locators = props.host_ports(p)?,
            "start-locator" => {
                // Geode's `host[port][,server=..][,peer=..]`: the options do not apply here.
                let mut parts = p.value.split(',');
                let at = parts.next().unwrap_or_default().trim();
                if !at.is_empty() {
                    out.start_locator = Some(HostPort::parse(at).map_err(|r| props.err(p, r))?);
                }
                for option in parts {
                    props.warn(
                        warnings,
                        p,
                        format!("`start-locator` option `{}` is not supported; ignored", option.trim()),
                    );
                }
            }
            "bind-address" => out.bind_address = props.ip(p)?,
            // The admin API (docs/admin-api.md); the range is checked with site.toml's.
            "http-service-port" => {
                out.http_service_port = Some(p.value.trim().parse().map_err(|_| {
                    props.err(p, format!("`{}` is not a port number", p.value))
                })?);
            }
            "http-service-bind-address" => out.http_service_bind_address = props.ip(p)?,
            "remote-locators" | "hostname-for-clients" | "member-timeout" => props.warn(
                warnings,
                p,
                format!(
                    "property `{}` applies to a locator (`strait start locator --properties-file`); a server ignores it",
                    p.key
                ),
            ),
            _ => props.warn_unsupported(warnings, p),
        }
    }
    Ok(out)
}

/// Reads a locator's `gemfire.properties` into `config`: `name`, `distributed-system-id`,
/// `remote-locators`, `hostname-for-clients`, `bind-address` and `member-timeout` replace
/// `config`'s settings; every other property is a warning.
pub fn parse_locator(
    src: Source<'_>,
    config: &mut LocatorConfig,
) -> Result<Vec<Warning>, ConfigError> {
    let mut warnings = Vec::new();
    let props = Props::read(src, &mut warnings)?;
    for p in &props.list {
        match p.key.as_str() {
            "name" => {
                if !p.value.is_empty() {
                    config.name = p.value.clone();
                }
            }
            "distributed-system-id" => config.distributed_system_id = props.site_id(p)?,
            "remote-locators" => config.remote_locators = props.host_ports(p)?,
            "hostname-for-clients" => {
                config.hostname_for_clients = Some(p.value.clone()).filter(|h| !h.is_empty());
            }
            "bind-address" => {
                if let Some(ip) = props.ip(p)? {
                    config.bind_address = ip;
                }
            }
            "member-timeout" => {
                let range = MEMBER_TIMEOUT_MS_MIN..=MEMBER_TIMEOUT_MS_MAX;
                config.member_timeout_ms = match p.value.parse::<u64>() {
                    Ok(v) if range.contains(&v) => v,
                    Ok(v) => {
                        return Err(props.err(
                            p,
                            format!("{v} ms is out of range ({MEMBER_TIMEOUT_MS_MIN}..={MEMBER_TIMEOUT_MS_MAX})"),
                        ));
                    }
                    Err(_) => {
                        return Err(props.err(p, format!("`{}` is not a number of ms", p.value)));
                    }
                };
            }
            _ => props.warn_unsupported(&mut warnings, p),
        }
    }
    Ok(dedup(warnings))
}

/// Each warning once (named region attributes are read once per region that refers to
/// them), in the order of file and line.
fn dedup(warnings: Vec<Warning>) -> Vec<Warning> {
    let mut out: Vec<Warning> = Vec::with_capacity(warnings.len());
    for w in warnings {
        if !out.contains(&w) {
            out.push(w);
        }
    }
    out.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    out
}

// ---- cache.xml ----------------------------------------------------------------------------

/// Reads a server's `cache.xml` and `gemfire.properties` (either may be absent) into a
/// validated [`SiteConfig`], with a warning for each element, attribute and property it does
/// not act on.
pub fn parse_server(
    cache_xml: Option<Source<'_>>,
    properties: Option<Source<'_>>,
) -> Result<Loaded<SiteConfig>, ConfigError> {
    let mut warnings = Vec::new();
    let props = match properties {
        Some(src) => server_props(src, &mut warnings)?,
        None => ServerProps::default(),
    };
    let mut raw = RawFile::default();
    let mut server = RawServer {
        name: props.name,
        distributed_system_id: props.site.map(|s| i64::from(s.0)),
        locators: props.locators.iter().map(HostPort::to_string).collect(),
        start_locator: props.start_locator.as_ref().map(HostPort::to_string),
        bind_address: props.bind_address.map(|ip| ip.to_string()),
        http_service_port: props.http_service_port,
        http_service_bind_address: props.http_service_bind_address.map(|ip| ip.to_string()),
        ..RawServer::default()
    };
    // Errors of the file-wide checks name the cache.xml when there is one.
    let (path, text) = match (cache_xml, properties) {
        (Some(x), _) => (x.path, x.text),
        (None, Some(p)) => (p.path, ""),
        (None, None) => (Path::new("(no Geode files)"), ""),
    };
    if let Some(src) = cache_xml {
        let options = ParsingOptions {
            allow_dtd: true,
            ..ParsingOptions::default()
        };
        let doc = Document::parse_with_options(src.text, options).map_err(|e| {
            let pos = e.pos();
            ConfigError {
                file: src.path.to_path_buf(),
                line: Some(pos.row as usize),
                key: String::new(),
                reason: format!("not well-formed XML: {e}"),
            }
        })?;
        let mut xml = Xml {
            src,
            warnings: &mut warnings,
        };
        xml.cache(doc.root_element(), &mut raw, &mut server)?;
        if props.site.is_none() {
            let first = raw
                .gateway_sender
                .first()
                .map(|s| (s.span(), format!("gateway sender `{}`", s.as_ref().id)))
                .or_else(|| {
                    raw.gateway_receiver
                        .as_ref()
                        .map(|r| (r.span(), "the gateway receiver".to_string()))
                });
            if let Some((span, what)) = first {
                return Err(ConfigError {
                    file: src.path.to_path_buf(),
                    line: Some(config::line_of(src.text, span.start)),
                    key: "distributed-system-id".into(),
                    reason: format!(
                        "{what} needs the site's distributed-system-id: set `distributed-system-id` (1..=255) in gemfire.properties (--properties-file)"
                    ),
                });
            }
        }
    }
    raw.server = Some(Spanned::new(0..0, server));
    let config = config::validate(path, text, raw)?;
    Ok(Loaded {
        config,
        warnings: dedup(warnings),
    })
}

/// A `<disk-store>`: its directories, in order.
struct DiskStore {
    dirs: Vec<PathBuf>,
}

/// Region attributes as far as they are known: from a shortcut, a named
/// `<region-attributes>`, then the region's own, each overriding the one before.
#[derive(Clone, Default)]
struct Attrs {
    kind: Option<RegionType>,
    persistent: Option<bool>,
    gateway_sender_ids: Option<Vec<String>>,
    total_num_buckets: Option<i64>,
}

struct Xml<'s, 'w> {
    src: Source<'s>,
    warnings: &'w mut Vec<Warning>,
}

/// The name an element is warned about by: `<name>`, with its namespace when foreign.
fn element_name(node: Node<'_, '_>) -> String {
    let tag = node.tag_name();
    match tag.namespace() {
        Some(ns) if !CACHE_NAMESPACES.contains(&ns) => format!("<{}> (namespace {ns})", tag.name()),
        _ => format!("<{}>", tag.name()),
    }
}

fn elements<'a, 'i>(node: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children().filter(|n| n.is_element())
}

/// Geode's attributes only: schema locations and foreign namespaces' attributes are skipped.
fn attributes<'a, 'i>(node: Node<'a, 'i>) -> impl Iterator<Item = Attribute<'a, 'i>> {
    node.attributes()
        .filter(|a| a.namespace().is_none_or(|ns| ns != XSI_NAMESPACE))
}

impl Xml<'_, '_> {
    fn line(&self, pos: usize) -> usize {
        config::line_of(self.src.text, pos)
    }

    fn err(&self, pos: usize, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.src.path.to_path_buf(),
            line: Some(self.line(pos)),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn warn(&mut self, pos: usize, message: impl Into<String>) {
        let line = Some(self.line(pos));
        self.warnings.push(Warning {
            file: self.src.path.to_path_buf(),
            line,
            message: message.into(),
        });
    }

    fn warn_element(&mut self, node: Node<'_, '_>, within: &str) {
        let name = element_name(node);
        self.warn(
            node.range().start,
            format!("element {name} in {within} is not supported; ignored"),
        );
    }

    fn warn_attribute(&mut self, node: Node<'_, '_>, a: &Attribute<'_, '_>) {
        let element = element_name(node);
        self.warn(
            a.range().start,
            format!(
                "attribute `{}` of {element} is not supported; ignored",
                a.name()
            ),
        );
    }

    fn key(node: Node<'_, '_>, a: &Attribute<'_, '_>) -> String {
        format!("{}.{}", node.tag_name().name(), a.name())
    }

    fn int(&self, node: Node<'_, '_>, a: &Attribute<'_, '_>) -> Result<i64, ConfigError> {
        a.value().trim().parse().map_err(|_| {
            self.err(
                a.range().start,
                Self::key(node, a),
                format!("`{}` is not a whole number", a.value()),
            )
        })
    }

    /// `xsd:boolean`: `true`, `false`, `1`, `0`.
    fn bool(&self, node: Node<'_, '_>, a: &Attribute<'_, '_>) -> Result<bool, ConfigError> {
        match a.value().trim() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            other => Err(self.err(
                a.range().start,
                Self::key(node, a),
                format!("`{other}` is not a boolean (true or false)"),
            )),
        }
    }

    fn required<'a, 'i>(
        &self,
        node: Node<'a, 'i>,
        name: &str,
    ) -> Result<Attribute<'a, 'i>, ConfigError> {
        attributes(node).find(|a| a.name() == name).ok_or_else(|| {
            self.err(
                node.range().start,
                format!("{}.{name}", node.tag_name().name()),
                format!("{} has no `{name}`", element_name(node)),
            )
        })
    }

    fn cache<'a, 'i>(
        &mut self,
        root: Node<'a, 'i>,
        raw: &mut RawFile,
        server: &mut RawServer,
    ) -> Result<(), ConfigError> {
        match root.tag_name().name() {
            "cache" => {}
            "client-cache" => {
                return Err(self.err(
                    root.range().start,
                    "",
                    "this is a client's cache.xml (<client-cache>); a server needs <cache>",
                ));
            }
            other => {
                return Err(self.err(
                    root.range().start,
                    "",
                    format!("the root element is <{other}>, not Geode's <cache>"),
                ));
            }
        }
        for a in attributes(root) {
            if a.name() != "version" {
                self.warn_attribute(root, &a);
            }
        }
        // References may come before what they refer to: disk stores and named region
        // attributes are gathered first.
        let mut stores: HashMap<String, DiskStore> = HashMap::new();
        let mut named: HashMap<String, Node<'a, 'i>> = HashMap::new();
        for node in elements(root) {
            match node.tag_name().name() {
                "disk-store" => {
                    let name = self.required(node, "name")?;
                    let store = self.disk_store(node)?;
                    if stores.insert(name.value().to_string(), store).is_some() {
                        return Err(self.err(
                            name.range().start,
                            "disk-store.name",
                            format!("disk store `{}` is defined twice", name.value()),
                        ));
                    }
                }
                "region-attributes" => match node.attribute("id") {
                    Some(id) => {
                        if named.insert(id.to_string(), node).is_some() {
                            return Err(self.err(
                                node.range().start,
                                "region-attributes.id",
                                format!("region attributes `{id}` are defined twice"),
                            ));
                        }
                    }
                    None => self.warn(
                        node.range().start,
                        "<region-attributes> at the top level without an `id` cannot be referred to; ignored",
                    ),
                },
                _ => {}
            }
        }
        // Named attributes are checked even when no region refers to them, as Geode does.
        let mut ids: Vec<&String> = named.keys().collect();
        ids.sort_by_key(|id| named[*id].range().start);
        for id in ids {
            self.region_attributes(named[id], &named, 0)?;
        }
        let mut cache_server_seen = false;
        for node in elements(root) {
            if node
                .tag_name()
                .namespace()
                .is_some_and(|ns| !CACHE_NAMESPACES.contains(&ns))
            {
                self.warn_element(node, "<cache>");
                continue;
            }
            match node.tag_name().name() {
                "disk-store" => {
                    // In the configuration too, so a sender created at run time can name it.
                    if let (Some(name), Some(dir)) = (
                        node.attribute("name"),
                        stores
                            .get(node.attribute("name").unwrap_or_default())
                            .and_then(|s| s.dirs.first()),
                    ) {
                        raw.disk_store.push(Spanned::new(
                            node.range(),
                            RawDiskStore {
                                name: name.to_string(),
                                directory: dir.clone(),
                            },
                        ));
                    }
                }
                "region-attributes" => {}
                "gateway-sender" => {
                    let sender = self.gateway_sender(node, &stores)?;
                    raw.gateway_sender.push(sender);
                }
                "gateway-receiver" => {
                    if raw.gateway_receiver.is_some() {
                        return Err(self.err(
                            node.range().start,
                            "gateway-receiver",
                            "a server has one gateway receiver; this is the second",
                        ));
                    }
                    raw.gateway_receiver = Some(self.gateway_receiver(node)?);
                }
                "region" => raw.region.push(self.region(node, &named)?),
                "cache-server" if !cache_server_seen => {
                    cache_server_seen = true;
                    self.cache_server(node, server)?;
                }
                "cache-server" => self.warn(
                    node.range().start,
                    "a second <cache-server>: Strait serves clients on one port; ignored",
                ),
                _ => self.warn_element(node, "<cache>"),
            }
        }
        Ok(())
    }

    fn disk_store(&mut self, node: Node<'_, '_>) -> Result<DiskStore, ConfigError> {
        for a in attributes(node) {
            if a.name() != "name" {
                self.warn_attribute(node, &a);
            }
        }
        let mut dirs = Vec::new();
        for child in elements(node) {
            if child.tag_name().name() != "disk-dirs" {
                self.warn_element(child, "<disk-store>");
                continue;
            }
            for dir in elements(child) {
                if dir.tag_name().name() != "disk-dir" {
                    self.warn_element(dir, "<disk-dirs>");
                    continue;
                }
                for a in attributes(dir) {
                    self.warn_attribute(dir, &a);
                }
                let text = dir.text().unwrap_or_default().trim();
                if text.is_empty() {
                    return Err(self.err(
                        dir.range().start,
                        "disk-dir",
                        "<disk-dir> names no directory",
                    ));
                }
                dirs.push(PathBuf::from(text));
            }
        }
        if dirs.len() > 1 {
            self.warn(
                node.range().start,
                format!(
                    "disk store `{}`: only its first directory is used ({}); the others are ignored",
                    node.attribute("name").unwrap_or_default(),
                    dirs[0].display()
                ),
            );
        }
        Ok(DiskStore { dirs })
    }

    fn gateway_sender(
        &mut self,
        node: Node<'_, '_>,
        stores: &HashMap<String, DiskStore>,
    ) -> Result<Spanned<RawSender>, ConfigError> {
        let id = self.required(node, "id")?.value().to_string();
        let remote = self.required(node, "remote-distributed-system-id")?;
        let mut s = RawSender {
            remote_distributed_system_id: self.int(node, &remote)?,
            id,
            parallel: None,
            batch_size: None,
            batch_time_interval: None,
            maximum_queue_memory: None,
            enable_persistence: None,
            disk_synchronous: None,
            sync_policy: None,
            enable_batch_conflation: None,
            dispatcher_threads: None,
            order_policy: None,
            alert_threshold: None,
            socket_buffer_size: None,
            socket_read_timeout: None,
            batches_in_flight: None,
            manual_start: None,
            disk_dir: None,
        };
        let mut store_name: Option<Attribute<'_, '_>> = None;
        for a in attributes(node) {
            match a.name() {
                "id" | "remote-distributed-system-id" => {}
                "parallel" => s.parallel = Some(self.bool(node, &a)?),
                "batch-size" => s.batch_size = Some(self.int(node, &a)?),
                "batch-time-interval" => s.batch_time_interval = Some(self.int(node, &a)?),
                "maximum-queue-memory" => s.maximum_queue_memory = Some(self.int(node, &a)?),
                "enable-persistence" => s.enable_persistence = Some(self.bool(node, &a)?),
                "disk-synchronous" => s.disk_synchronous = Some(self.bool(node, &a)?),
                "enable-batch-conflation" => {
                    s.enable_batch_conflation = Some(self.bool(node, &a)?);
                }
                "dispatcher-threads" => s.dispatcher_threads = Some(self.int(node, &a)?),
                "order-policy" => {
                    s.order_policy = Some(match a.value().trim().to_ascii_lowercase().as_str() {
                        "key" => OrderPolicy::Key,
                        "thread" => OrderPolicy::Thread,
                        "partition" => OrderPolicy::Partition,
                        other => {
                            return Err(self.err(
                                a.range().start,
                                "gateway-sender.order-policy",
                                format!(
                                    "`{other}` is not an order policy: KEY, THREAD or PARTITION"
                                ),
                            ));
                        }
                    });
                }
                "alert-threshold" => s.alert_threshold = Some(self.int(node, &a)?),
                "socket-buffer-size" => s.socket_buffer_size = Some(self.int(node, &a)?),
                "socket-read-timeout" => s.socket_read_timeout = Some(self.int(node, &a)?),
                "manual-start" => s.manual_start = Some(self.bool(node, &a)?),
                "disk-store-name" => store_name = Some(a),
                _ => self.warn_attribute(node, &a),
            }
        }
        // Each sender gets a directory of its own inside the store's first directory, as
        // several senders may share a store; a relative one is inside the server's directory.
        let store = match &store_name {
            Some(a) => Some(stores.get(a.value()).ok_or_else(|| {
                self.err(
                    a.range().start,
                    "gateway-sender.disk-store-name",
                    format!("no <disk-store> is named `{}`", a.value()),
                )
            })?),
            None => stores.get(DEFAULT_DISK_STORE),
        };
        if let Some(dir) = store.and_then(|st| st.dirs.first()) {
            s.disk_dir = Some(Path::new(".").join(dir).join(&s.id));
        }
        for child in elements(node) {
            let what = match child.tag_name().name() {
                "gateway-event-filter" | "gateway-event-substitution-filter" => {
                    "events are sent unfiltered"
                }
                "gateway-transport-filter" => "batches are sent as they are",
                _ => "",
            };
            if what.is_empty() {
                self.warn_element(child, "<gateway-sender>");
            } else {
                self.warn(
                    child.range().start,
                    format!(
                        "{} of gateway sender `{}` is not supported (Strait runs no Java classes): {what}",
                        element_name(child),
                        s.id
                    ),
                );
            }
        }
        Ok(Spanned::new(node.range(), s))
    }

    fn gateway_receiver(
        &mut self,
        node: Node<'_, '_>,
    ) -> Result<Spanned<RawReceiver>, ConfigError> {
        let mut r = RawReceiver {
            start_port: None,
            end_port: None,
            bind_address: None,
            hostname_for_senders: None,
            maximum_time_between_pings: None,
            socket_buffer_size: None,
            manual_start: None,
        };
        for a in attributes(node) {
            match a.name() {
                "start-port" => r.start_port = Some(self.int(node, &a)?),
                "end-port" => r.end_port = Some(self.int(node, &a)?),
                "bind-address" => r.bind_address = Some(a.value().trim().to_string()),
                "hostname-for-senders" => {
                    r.hostname_for_senders = Some(a.value().trim().to_string())
                }
                "maximum-time-between-pings" => {
                    r.maximum_time_between_pings = Some(self.int(node, &a)?);
                }
                "socket-buffer-size" => r.socket_buffer_size = Some(self.int(node, &a)?),
                "manual-start" => r.manual_start = Some(self.bool(node, &a)?),
                _ => self.warn_attribute(node, &a),
            }
        }
        for child in elements(node) {
            self.warn_element(child, "<gateway-receiver>");
        }
        Ok(Spanned::new(node.range(), r))
    }

    fn cache_server(
        &mut self,
        node: Node<'_, '_>,
        server: &mut RawServer,
    ) -> Result<(), ConfigError> {
        for a in attributes(node) {
            match a.name() {
                "port" => server.client_port = Some(self.int(node, &a)?),
                "bind-address" => {
                    let v = a.value().trim();
                    if !v.is_empty() {
                        let ip: IpAddr = v.parse().map_err(|_| {
                            self.err(
                                a.range().start,
                                "cache-server.bind-address",
                                format!("`{v}` is not an IP address"),
                            )
                        })?;
                        server.bind_address = Some(ip.to_string());
                    }
                }
                _ => self.warn_attribute(node, &a),
            }
        }
        for child in elements(node) {
            self.warn_element(child, "<cache-server>");
        }
        Ok(())
    }

    fn region(
        &mut self,
        node: Node<'_, '_>,
        named: &HashMap<String, Node<'_, '_>>,
    ) -> Result<Spanned<RawRegion>, ConfigError> {
        let name = self.required(node, "name")?.value().to_string();
        let mut attrs = Attrs::default();
        for a in attributes(node) {
            match a.name() {
                "name" => {}
                "refid" => attrs = self.refid(&a, named, 0)?,
                _ => self.warn_attribute(node, &a),
            }
        }
        for child in elements(node) {
            match child.tag_name().name() {
                "region-attributes" => attrs = self.apply_attributes(child, attrs, named, 0)?,
                "region" => self.warn(
                    child.range().start,
                    format!(
                        "subregion `{}` of region `{name}` is not supported (Strait regions are flat); ignored",
                        child.attribute("name").unwrap_or_default()
                    ),
                ),
                _ => self.warn_element(child, "<region>"),
            }
        }
        let Some(kind) = attrs.kind else {
            return Err(self.err(
                node.range().start,
                "region.refid",
                format!(
                    "region `{name}` has no data policy: give it refid=\"PARTITION\" (or another shortcut) or <region-attributes data-policy=\"partition\">"
                ),
            ));
        };
        Ok(Spanned::new(
            node.range(),
            RawRegion {
                name,
                kind,
                total_num_buckets: attrs.total_num_buckets,
                gateway_sender_ids: attrs.gateway_sender_ids.unwrap_or_default(),
                persistent: attrs.persistent.unwrap_or(false),
            },
        ))
    }

    /// The attributes a `refid` stands for: a region shortcut, or named region attributes.
    fn refid(
        &mut self,
        a: &Attribute<'_, '_>,
        named: &HashMap<String, Node<'_, '_>>,
        depth: usize,
    ) -> Result<Attrs, ConfigError> {
        let value = a.value().trim();
        if let Some(attrs) = self.shortcut(value, a.range().start)? {
            return Ok(attrs);
        }
        if depth >= REFID_DEPTH_MAX {
            return Err(self.err(
                a.range().start,
                "refid",
                format!("refid `{value}`: the chain of refids is circular or longer than {REFID_DEPTH_MAX}"),
            ));
        }
        match named.get(value) {
            Some(node) => self.region_attributes(*node, named, depth + 1),
            None => Err(self.err(
                a.range().start,
                "refid",
                format!("`{value}` is neither a region shortcut (PARTITION, REPLICATE_PERSISTENT, ...) nor the id of a <region-attributes>"),
            )),
        }
    }

    /// Named (or inline) region attributes on their own: their `refid`, then themselves.
    fn region_attributes(
        &mut self,
        node: Node<'_, '_>,
        named: &HashMap<String, Node<'_, '_>>,
        depth: usize,
    ) -> Result<Attrs, ConfigError> {
        self.apply_attributes(node, Attrs::default(), named, depth)
    }

    /// `<region-attributes>` over `base`: its `refid` (which replaces `base`), then its own
    /// attributes and `<partition-attributes>`.
    fn apply_attributes(
        &mut self,
        node: Node<'_, '_>,
        base: Attrs,
        named: &HashMap<String, Node<'_, '_>>,
        depth: usize,
    ) -> Result<Attrs, ConfigError> {
        let mut attrs = match attributes(node).find(|a| a.name() == "refid") {
            Some(a) => self.refid(&a, named, depth)?,
            None => base,
        };
        for a in attributes(node) {
            match a.name() {
                "id" | "refid" => {}
                "data-policy" => {
                    let (kind, persistent) = match a.value().trim().to_ascii_lowercase().replace('_', "-").as_str() {
                        "partition" => (RegionType::Partition, false),
                        "persistent-partition" => (RegionType::Partition, true),
                        "replicate" => (RegionType::Replicate, false),
                        "persistent-replicate" => (RegionType::Replicate, true),
                        other => {
                            return Err(self.err(
                                a.range().start,
                                "region-attributes.data-policy",
                                format!("data policy `{other}` is not supported: use partition, persistent-partition, replicate or persistent-replicate (Strait regions hold their data)"),
                            ));
                        }
                    };
                    attrs.kind = Some(kind);
                    attrs.persistent = Some(persistent);
                }
                "gateway-sender-ids" => {
                    attrs.gateway_sender_ids = Some(
                        a.value()
                            .split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect(),
                    );
                }
                "concurrency-checks-enabled" if a.value().trim() == "true" => {}
                "concurrency-checks-enabled" => self.warn(
                    a.range().start,
                    "concurrency-checks-enabled=\"false\" is not supported: Strait always compares versions (the WAN conflict rule needs them)",
                ),
                _ => self.warn_attribute(node, &a),
            }
        }
        for child in elements(node) {
            if child.tag_name().name() != "partition-attributes" {
                self.warn_element(child, "<region-attributes>");
                continue;
            }
            for a in attributes(child) {
                match a.name() {
                    "total-num-buckets" => attrs.total_num_buckets = Some(self.int(child, &a)?),
                    "redundant-copies" if a.value().trim() == "0" => {}
                    "redundant-copies" => self.warn(
                        a.range().start,
                        "redundant-copies is not supported (a Strait site keeps one copy of each bucket); ignored",
                    ),
                    _ => self.warn_attribute(child, &a),
                }
            }
            for grandchild in elements(child) {
                self.warn_element(grandchild, "<partition-attributes>");
            }
        }
        Ok(attrs)
    }

    /// A region shortcut (Geode's `RegionShortcut`): `None` for a name that is not one.
    fn shortcut(&mut self, name: &str, pos: usize) -> Result<Option<Attrs>, ConfigError> {
        let kind = if name.starts_with("PARTITION") {
            RegionType::Partition
        } else if name.starts_with("REPLICATE") {
            RegionType::Replicate
        } else if name.starts_with("LOCAL") {
            return Err(self.err(
                pos,
                "refid",
                format!("{name}: local regions are not supported (Strait regions are distributed); use PARTITION or REPLICATE"),
            ));
        } else {
            return Ok(None);
        };
        const KNOWN: [&str; 17] = [
            "PARTITION",
            "PARTITION_REDUNDANT",
            "PARTITION_PERSISTENT",
            "PARTITION_REDUNDANT_PERSISTENT",
            "PARTITION_OVERFLOW",
            "PARTITION_REDUNDANT_OVERFLOW",
            "PARTITION_PERSISTENT_OVERFLOW",
            "PARTITION_REDUNDANT_PERSISTENT_OVERFLOW",
            "PARTITION_HEAP_LRU",
            "PARTITION_REDUNDANT_HEAP_LRU",
            "PARTITION_PROXY",
            "PARTITION_PROXY_REDUNDANT",
            "REPLICATE",
            "REPLICATE_PERSISTENT",
            "REPLICATE_OVERFLOW",
            "REPLICATE_PERSISTENT_OVERFLOW",
            "REPLICATE_HEAP_LRU",
        ];
        if !KNOWN.contains(&name) && name != "REPLICATE_PROXY" {
            return Ok(None);
        }
        if name.contains("PROXY") {
            return Err(self.err(
                pos,
                "refid",
                format!(
                    "{name}: proxy regions hold no data and are not supported; use {}",
                    if kind == RegionType::Partition {
                        "PARTITION"
                    } else {
                        "REPLICATE"
                    }
                ),
            ));
        }
        if name.contains("REDUNDANT") {
            self.warn(
                pos,
                format!("{name}: redundant copies are not supported (a Strait site keeps one copy of each bucket); ignored"),
            );
        }
        if name.contains("OVERFLOW") || name.contains("HEAP_LRU") {
            self.warn(
                pos,
                format!("{name}: eviction (overflow to disk, heap LRU) is not supported; the region is kept in memory"),
            );
        }
        Ok(Some(Attrs {
            kind: Some(kind),
            persistent: Some(name.contains("PERSISTENT")),
            gateway_sender_ids: None,
            total_num_buckets: None,
        }))
    }
}
