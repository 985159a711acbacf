//! Changes made while a server runs: gfsh's `create|destroy disk-store`, `create|alter|destroy
//! gateway-sender`, `create|destroy gateway-receiver` and `create|alter|destroy region`.
//!
//! | type | what it is |
//! |---|---|
//! | [`Change`] | one change, as the admin API takes it and the journal keeps it |
//! | [`State`] | the effective configuration: the start configuration with every change applied, and the disk stores |
//! | [`State::apply`] | pure: a change against a state gives the next state or a [`ChangeError`] |
//! | [`Journal`] | `<directory>/runtime-changes.json`: the changes in order, replayed at every start |
//! | [`RegionIds`] | `<directory>/region-ids.json`: the id each region name has had on this server |
//!
//! A change is validated by writing the changed configuration out as a `site.toml` and reading
//! it back through [`crate::config::parse`], so a run-time change meets exactly the checks and
//! defaults of the file (ranges, references, a `distributed-system-id` where one is needed).
//!
//! Region ids: an event in a queue names its region by id (its position in the id table), so
//! ids never move. A region keeps its id for the life of the server directory, also when it
//! is destroyed (a region created again under that name gets it back) and whatever order the
//! configuration lists regions in; new names get the next id. The table is a file because
//! queued events outlive a restart.

use crate::config::{self, ConfigError, SiteConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The journal's file in the server's directory.
pub const JOURNAL_FILE: &str = "runtime-changes.json";
/// The region id table's file in the server's directory.
pub const REGION_IDS_FILE: &str = "region-ids.json";
/// The disk store a sender created without `disk-store-name` uses, when it exists (Geode's).
pub const DEFAULT_DISK_STORE: &str = "DEFAULT";
/// Most changes a journal holds; a change beyond it is refused (the journal is rewritten
/// whole at each change).
pub const JOURNAL_CHANGES_MAX: usize = 10_000;
/// Most region ids a server directory hands out (ids are 16-bit).
pub const REGION_IDS_MAX: usize = u16::MAX as usize;

/// Sender options `alter gateway-sender` changes on a running sender (Geode's `alter
/// gateway-sender` changes the first three; the others are Strait's and apply at the next
/// connection as well). Every other option is fixed once the queues exist.
pub const ALTERABLE_SENDER_OPTIONS: [&str; 5] = [
    "batch-size",
    "batch-time-interval",
    "alert-threshold",
    "batches-in-flight",
    "socket-read-timeout",
];

/// One change. Options use `site.toml`'s keys (`docs/configuration.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Change {
    /// A named directory for persistent senders' queues; relative to the server's directory.
    CreateDiskStore {
        name: String,
        directory: PathBuf,
    },
    DestroyDiskStore {
        name: String,
    },
    /// `[[gateway-sender]]` options, plus `disk-store-name`.
    CreateGatewaySender {
        options: Map<String, Value>,
    },
    AlterGatewaySender {
        id: String,
        options: Map<String, Value>,
    },
    DestroyGatewaySender {
        id: String,
    },
    /// `[gateway-receiver]` options.
    CreateGatewayReceiver {
        options: Map<String, Value>,
    },
    DestroyGatewayReceiver,
    /// `[[region]]` options; `type` may also be a Geode shortcut (`PARTITION_PERSISTENT`, ...).
    CreateRegion {
        options: Map<String, Value>,
    },
    /// Replaces the region's `gateway-sender-ids`.
    AlterRegion {
        name: String,
        gateway_sender_ids: Vec<String>,
    },
    DestroyRegion {
        name: String,
    },
}

impl Change {
    /// A few words naming the change, for errors and logs.
    pub fn summary(&self) -> String {
        let opt = |o: &Map<String, Value>, k: &str| {
            o.get(k).and_then(Value::as_str).unwrap_or("?").to_string()
        };
        match self {
            Change::CreateDiskStore { name, .. } => format!("create disk-store `{name}`"),
            Change::DestroyDiskStore { name } => format!("destroy disk-store `{name}`"),
            Change::CreateGatewaySender { options } => {
                format!("create gateway-sender `{}`", opt(options, "id"))
            }
            Change::AlterGatewaySender { id, .. } => format!("alter gateway-sender `{id}`"),
            Change::DestroyGatewaySender { id } => format!("destroy gateway-sender `{id}`"),
            Change::CreateGatewayReceiver { .. } => "create gateway-receiver".into(),
            Change::DestroyGatewayReceiver => "destroy gateway-receiver".into(),
            Change::CreateRegion { options } => {
                format!("create region `{}`", opt(options, "name"))
            }
            Change::AlterRegion { name, .. } => format!("alter region `{name}`"),
            Change::DestroyRegion { name } => format!("destroy region `{name}`"),
        }
    }
}

/// Why a change is refused. Each names what is wrong and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// The thing to create exists already (HTTP 409).
    #[error("{0}")]
    Exists(String),
    /// The thing to change does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// Something else stands in the way (HTTP 409): a sender still used by a region.
    #[error("{0}")]
    InUse(String),
    /// An option is missing, unknown or out of range (HTTP 400).
    #[error("{0}")]
    Invalid(String),
}

/// The effective configuration: the start configuration with every change applied.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub config: SiteConfig,
}

impl State {
    /// The state of a server started with `config` and no change yet.
    pub fn new(config: SiteConfig) -> State {
        State { config }
    }

    /// Disk store `name`'s directory.
    pub fn disk_store_path(&self, name: &str) -> Option<PathBuf> {
        self.config
            .disk_stores
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.path(&self.config.server.directory))
    }

    /// The senders whose queues are in disk store `name` (their `disk-dir` inside its
    /// directory).
    pub fn senders_in(&self, name: &str) -> Vec<String> {
        let Some(dir) = self.disk_store_path(name) else {
            return Vec::new();
        };
        self.config
            .senders
            .iter()
            .filter(|s| s.disk_dir.starts_with(&dir))
            .map(|s| s.id.clone())
            .collect()
    }

    /// The state after `change`, or why it is refused. Pure: nothing is touched.
    pub fn apply(&self, change: &Change) -> Result<State, ChangeError> {
        let cfg = &self.config;
        let mut file: toml::Table = toml::from_str(&config::to_toml(cfg))
            .map_err(|e| ChangeError::Invalid(format!("the current configuration: {e}")))?;
        match change {
            Change::CreateDiskStore { name, directory } => {
                check_name("disk store", name)?;
                if self.disk_store_path(name).is_some() {
                    return Err(ChangeError::Exists(format!(
                        "disk store `{name}` already exists; destroy it first or choose another name"
                    )));
                }
                let mut t = toml::Table::new();
                t.insert("name".into(), toml::Value::String(name.clone()));
                t.insert(
                    "directory".into(),
                    toml::Value::String(directory.display().to_string()),
                );
                push_table(&mut file, "disk-store", t);
            }
            Change::DestroyDiskStore { name } => {
                let Some(i) = cfg.disk_stores.iter().position(|d| &d.name == name) else {
                    return Err(ChangeError::NotFound(format!(
                        "unknown disk store `{name}`; `strait list disk-stores` shows them"
                    )));
                };
                let users = self.senders_in(name);
                if !users.is_empty() {
                    let users: Vec<&str> = users.iter().map(String::as_str).collect();
                    return Err(ChangeError::InUse(format!(
                        "disk store `{name}` holds the queues of gateway sender(s) {}; destroy them first",
                        quoted(&users)
                    )));
                }
                remove_item(&mut file, "disk-store", i);
            }
            Change::CreateGatewaySender { options } => {
                let mut options = options.clone();
                let id = required_text(&options, "id", "gateway sender")?;
                if cfg.senders.iter().any(|s| s.id == id) {
                    return Err(ChangeError::Exists(format!(
                        "gateway sender `{id}` already exists; `alter gateway-sender` changes it, or destroy it first"
                    )));
                }
                let store = match options.remove("disk-store-name") {
                    Some(Value::String(s)) => Some(s),
                    Some(other) => {
                        return Err(ChangeError::Invalid(format!(
                            "gateway sender `{id}`: `disk-store-name` must be a name, not {other}"
                        )));
                    }
                    None if !options.contains_key("disk-dir")
                        && self.disk_store_path(DEFAULT_DISK_STORE).is_some() =>
                    {
                        Some(DEFAULT_DISK_STORE.to_string())
                    }
                    None => None,
                };
                if let Some(store) = &store {
                    let Some(dir) = self.disk_store_path(store) else {
                        return Err(ChangeError::NotFound(format!(
                            "gateway sender `{id}`: unknown disk store `{store}`; create it first (`strait create disk-store`)"
                        )));
                    };
                    if options.contains_key("disk-dir") {
                        return Err(ChangeError::Invalid(format!(
                            "gateway sender `{id}`: give `disk-store-name` or `disk-dir`, not both"
                        )));
                    }
                    options.insert(
                        "disk-dir".into(),
                        Value::String(dir.join(&id).display().to_string()),
                    );
                }
                push_table(&mut file, "gateway-sender", to_table(&options)?);
            }
            Change::AlterGatewaySender { id, options } => {
                let Some(i) = cfg.senders.iter().position(|s| &s.id == id) else {
                    return Err(unknown_sender(id));
                };
                if options.is_empty() {
                    return Err(ChangeError::Invalid(format!(
                        "alter gateway-sender `{id}`: no option given; it changes {}",
                        ALTERABLE_SENDER_OPTIONS.join(", ")
                    )));
                }
                for key in options.keys() {
                    if !ALTERABLE_SENDER_OPTIONS.contains(&key.as_str()) {
                        return Err(ChangeError::Invalid(format!(
                            "gateway sender `{id}`: `{key}` cannot be altered on an existing sender (only {}); destroy the sender and create it again",
                            ALTERABLE_SENDER_OPTIONS.join(", ")
                        )));
                    }
                }
                let table = array_item(&mut file, "gateway-sender", i)?;
                for (k, v) in to_table(options)? {
                    table.insert(k, v);
                }
            }
            Change::DestroyGatewaySender { id } => {
                let Some(i) = cfg.senders.iter().position(|s| &s.id == id) else {
                    return Err(unknown_sender(id));
                };
                let users: Vec<&str> = cfg
                    .regions
                    .iter()
                    .filter(|r| r.gateway_sender_ids.contains(id))
                    .map(|r| r.name.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(ChangeError::InUse(format!(
                        "gateway sender `{id}` is used by region(s) {}; detach it first (`strait alter region --name <region> --gateway-sender-id ...`) or destroy the region(s)",
                        quoted(&users)
                    )));
                }
                remove_item(&mut file, "gateway-sender", i);
            }
            Change::CreateGatewayReceiver { options } => {
                if cfg.receiver.is_some() {
                    return Err(ChangeError::Exists(
                        "this server already has a gateway receiver; destroy it first".into(),
                    ));
                }
                file.insert(
                    "gateway-receiver".into(),
                    toml::Value::Table(to_table(options)?),
                );
            }
            Change::DestroyGatewayReceiver => {
                if cfg.receiver.is_none() {
                    return Err(ChangeError::NotFound(
                        "this server has no gateway receiver".into(),
                    ));
                }
                file.remove("gateway-receiver");
            }
            Change::CreateRegion { options } => {
                let mut options = options.clone();
                let name = required_text(&options, "name", "region")?;
                if cfg.regions.iter().any(|r| r.name == name) {
                    return Err(ChangeError::Exists(format!(
                        "region `{name}` already exists; destroy it first or choose another name"
                    )));
                }
                if let Some(Value::String(t)) = options.get("type").cloned()
                    && let Some((kind, persistent)) = shortcut(&t)?
                {
                    options.insert("type".into(), Value::String(kind.into()));
                    if persistent {
                        if options.get("persistent") == Some(&Value::Bool(false)) {
                            return Err(ChangeError::Invalid(format!(
                                "region `{name}`: type {t} is persistent but `persistent` is false"
                            )));
                        }
                        options.insert("persistent".into(), Value::Bool(true));
                    }
                }
                push_table(&mut file, "region", to_table(&options)?);
            }
            Change::AlterRegion {
                name,
                gateway_sender_ids,
            } => {
                let Some(i) = cfg.regions.iter().position(|r| &r.name == name) else {
                    return Err(unknown_region(name));
                };
                let table = array_item(&mut file, "region", i)?;
                table.insert(
                    "gateway-sender-ids".into(),
                    toml::Value::Array(
                        gateway_sender_ids
                            .iter()
                            .map(|s| toml::Value::String(s.clone()))
                            .collect(),
                    ),
                );
            }
            Change::DestroyRegion { name } => {
                let Some(i) = cfg.regions.iter().position(|r| &r.name == name) else {
                    return Err(unknown_region(name));
                };
                remove_item(&mut file, "region", i);
            }
        }
        let text = toml::to_string(&file)
            .map_err(|e| ChangeError::Invalid(format!("cannot write the configuration: {e}")))?;
        let config = config::parse(Path::new("(the change)"), &text).map_err(invalid)?;
        Ok(State { config })
    }
}

fn invalid(e: ConfigError) -> ChangeError {
    if e.key.is_empty() {
        ChangeError::Invalid(e.reason)
    } else {
        ChangeError::Invalid(format!("{}: {}", e.key, e.reason))
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_sender(id: &str) -> ChangeError {
    ChangeError::NotFound(format!(
        "unknown gateway sender `{id}`; `strait list gateways` shows the senders"
    ))
}

fn unknown_region(name: &str) -> ChangeError {
    ChangeError::NotFound(format!(
        "unknown region `{name}`; `strait list regions` shows the regions"
    ))
}

fn check_name(what: &str, name: &str) -> Result<(), ChangeError> {
    if name.is_empty()
        || name.len() > config::NAME_BYTES_MAX
        || name.contains(['/', '\\'])
        || name.chars().any(char::is_control)
    {
        return Err(ChangeError::Invalid(format!(
            "{what} name `{name}`: 1 to {} bytes, no `/`, `\\` or control characters",
            config::NAME_BYTES_MAX
        )));
    }
    Ok(())
}

fn required_text(
    options: &Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<String, ChangeError> {
    match options.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(ChangeError::Invalid(format!(
            "{what}: `{key}` must be text, not {other}"
        ))),
        None => Err(ChangeError::Invalid(format!("{what}: `{key}` is required"))),
    }
}

/// A Geode region shortcut: (type, persistent), `None` for `partition`/`replicate`.
fn shortcut(t: &str) -> Result<Option<(&'static str, bool)>, ChangeError> {
    let kind = match t {
        "partition" | "replicate" => return Ok(None),
        "PARTITION" | "PARTITION_REDUNDANT" => ("partition", false),
        "PARTITION_PERSISTENT" | "PARTITION_REDUNDANT_PERSISTENT" => ("partition", true),
        "REPLICATE" => ("replicate", false),
        "REPLICATE_PERSISTENT" => ("replicate", true),
        other => {
            return Err(ChangeError::Invalid(format!(
                "region type `{other}`: use partition, replicate, or one of Geode's PARTITION, PARTITION_REDUNDANT, PARTITION_PERSISTENT, PARTITION_REDUNDANT_PERSISTENT, REPLICATE, REPLICATE_PERSISTENT"
            )));
        }
    };
    Ok(Some(kind))
}

/// JSON options as a TOML table: text, whole numbers, booleans and lists of text.
fn to_table(options: &Map<String, Value>) -> Result<toml::Table, ChangeError> {
    let mut t = toml::Table::new();
    for (k, v) in options {
        t.insert(k.clone(), to_toml_value(k, v)?);
    }
    Ok(t)
}

fn to_toml_value(key: &str, v: &Value) -> Result<toml::Value, ChangeError> {
    Ok(match v {
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => {
                return Err(ChangeError::Invalid(format!(
                    "`{key}`: {n} is not a whole number"
                )));
            }
        },
        Value::Array(items) => toml::Value::Array(
            items
                .iter()
                .map(|i| to_toml_value(key, i))
                .collect::<Result<_, _>>()?,
        ),
        other => {
            return Err(ChangeError::Invalid(format!(
                "`{key}`: {other} is not an option value (text, a number, true/false or a list)"
            )));
        }
    })
}

fn push_table(file: &mut toml::Table, key: &str, table: toml::Table) {
    let entry = file
        .entry(key.to_string())
        .or_insert_with(|| toml::Value::Array(Vec::new()));
    if let toml::Value::Array(a) = entry {
        a.push(toml::Value::Table(table));
    }
}

fn array_item<'a>(
    file: &'a mut toml::Table,
    key: &str,
    i: usize,
) -> Result<&'a mut toml::Table, ChangeError> {
    match file.get_mut(key) {
        Some(toml::Value::Array(a)) => match a.get_mut(i) {
            Some(toml::Value::Table(t)) => Ok(t),
            _ => Err(ChangeError::Invalid(format!(
                "the current configuration has no {key} {i}"
            ))),
        },
        _ => Err(ChangeError::Invalid(format!(
            "the current configuration has no {key}"
        ))),
    }
}

fn remove_item(file: &mut toml::Table, key: &str, i: usize) {
    if let Some(toml::Value::Array(a)) = file.get_mut(key) {
        if i < a.len() {
            a.remove(i);
        }
        if a.is_empty() {
            file.remove(key);
        }
    }
}

// ---- the journal ----------------------------------------------------------------------

/// Why the journal or the id table cannot be read, written or replayed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: not a journal of run-time changes: {reason}")]
    Format { file: PathBuf, reason: String },
    #[error(
        "{file}: change {index} ({summary}) no longer applies to this configuration: {reason}; remove it from the journal or from the configuration file"
    )]
    Replay {
        file: PathBuf,
        index: usize,
        summary: String,
        reason: String,
    },
    #[error("{file}: more than {REGION_IDS_MAX} region names have had ids in this directory")]
    RegionIdsFull { file: PathBuf },
}

#[derive(Serialize, Deserialize, Default)]
struct JournalFile {
    changes: Vec<Change>,
}

/// The changes made at run time, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Journal {
    pub changes: Vec<Change>,
}

impl Journal {
    /// Reads `<directory>/runtime-changes.json`; no file is no change.
    pub fn load(directory: &Path) -> Result<Journal, JournalError> {
        let file = directory.join(JOURNAL_FILE);
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Journal::default()),
            Err(source) => return Err(JournalError::Io { file, source }),
        };
        let parsed: JournalFile =
            serde_json::from_str(&text).map_err(|e| JournalError::Format {
                file: file.clone(),
                reason: e.to_string(),
            })?;
        Ok(Journal {
            changes: parsed.changes,
        })
    }

    /// The state after every change, starting from `config`.
    pub fn replay(&self, directory: &Path, config: SiteConfig) -> Result<State, JournalError> {
        let mut state = State::new(config);
        for (index, change) in self.changes.iter().enumerate() {
            state = state.apply(change).map_err(|e| JournalError::Replay {
                file: directory.join(JOURNAL_FILE),
                index: index + 1,
                summary: change.summary(),
                reason: e.to_string(),
            })?;
        }
        Ok(state)
    }

    /// Writes the journal whole: a new file synced, then renamed over the old one.
    pub fn save(&self, directory: &Path) -> Result<(), JournalError> {
        let text = serde_json::to_string_pretty(&JournalFile {
            changes: self.changes.clone(),
        })
        .map_err(|e| JournalError::Format {
            file: directory.join(JOURNAL_FILE),
            reason: e.to_string(),
        })?;
        write_atomically(&directory.join(JOURNAL_FILE), text.as_bytes())
    }
}

fn write_atomically(file: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    let io = |source| JournalError::Io {
        file: file.to_path_buf(),
        source,
    };
    let tmp = file.with_extension("json.new");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, file).map_err(io)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

// ---- region ids ---------------------------------------------------------------------------

/// The region name each id stands for, in id order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionIds {
    pub names: Vec<String>,
}

impl RegionIds {
    /// Reads `<directory>/region-ids.json`; no file is no id yet.
    pub fn load(directory: &Path) -> Result<RegionIds, JournalError> {
        let file = directory.join(REGION_IDS_FILE);
        match std::fs::read_to_string(&file) {
            Ok(t) => serde_json::from_str(&t)
                .map(|names| RegionIds { names })
                .map_err(|e| JournalError::Format {
                    file,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RegionIds::default()),
            Err(source) => Err(JournalError::Io { file, source }),
        }
    }

    /// The table with an id for every region of `config`: new names get the next ids, in
    /// the configuration's order. `None` when the ids run out.
    pub fn assign(&self, config: &SiteConfig) -> Option<RegionIds> {
        let mut names = self.names.clone();
        for r in &config.regions {
            if !names.contains(&r.name) {
                names.push(r.name.clone());
            }
        }
        (names.len() <= REGION_IDS_MAX).then_some(RegionIds { names })
    }

    /// The id of region `name`.
    pub fn id(&self, name: &str) -> Option<u16> {
        self.names.iter().position(|n| n == name).map(|i| i as u16)
    }

    pub fn save(&self, directory: &Path) -> Result<(), JournalError> {
        let text = serde_json::to_string(&self.names).unwrap_or_else(|_| "[]".into());
        write_atomically(&directory.join(REGION_IDS_FILE), text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> State {
        let cfg = config::parse(
            Path::new("site.toml"),
            "[server]\ndistributed-system-id = 1\ndirectory = \"/srv/s1\"\n\
             [[gateway-sender]]\nid = \"to2\"\nremote-distributed-system-id = 2\n\
             [[region]]\nname = \"orders\"\ntype = \"partition\"\ngateway-sender-ids = [\"to2\"]\n",
        )
        .unwrap();
        State::new(cfg)
    }

    fn opts(v: serde_json::Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_region_is_created_with_the_files_defaults_and_a_geode_shortcut() {
        let s = base()
            .apply(&Change::CreateRegion {
                options: opts(json!({"name": "users", "type": "PARTITION_PERSISTENT",
                    "gateway-sender-ids": ["to2"]})),
            })
            .unwrap();
        let r = s.config.regions.iter().find(|r| r.name == "users").unwrap();
        assert!(r.persistent);
        assert_eq!(r.total_num_buckets, config::TOTAL_NUM_BUCKETS_DEFAULT);
        assert_eq!(r.gateway_sender_ids, vec!["to2".to_string()]);
    }

    #[test]
    fn refusals_name_the_problem() {
        let s = base();
        let again = Change::CreateRegion {
            options: opts(json!({"name": "orders", "type": "partition"})),
        };
        assert!(
            matches!(s.apply(&again), Err(ChangeError::Exists(m)) if m.contains("`orders` already exists"))
        );
        let unknown_sender = Change::CreateRegion {
            options: opts(
                json!({"name": "x", "type": "partition", "gateway-sender-ids": ["nope"]}),
            ),
        };
        assert!(
            matches!(s.apply(&unknown_sender), Err(ChangeError::Invalid(m)) if m.contains("nope"))
        );
        let range = Change::CreateGatewaySender {
            options: opts(json!({"id": "to3", "remote-distributed-system-id": 3, "batch-size": 0})),
        };
        assert!(
            matches!(s.apply(&range), Err(ChangeError::Invalid(m)) if m.contains("batch-size"))
        );
        let used = Change::DestroyGatewaySender { id: "to2".into() };
        assert!(matches!(s.apply(&used), Err(ChangeError::InUse(m)) if m.contains("`orders`")));
        let fixed = Change::AlterGatewaySender {
            id: "to2".into(),
            options: opts(json!({"parallel": true})),
        };
        assert!(
            matches!(s.apply(&fixed), Err(ChangeError::Invalid(m)) if m.contains("cannot be altered"))
        );
        let missing = Change::AlterGatewaySender {
            id: "to9".into(),
            options: opts(json!({"batch-size": 5})),
        };
        assert!(matches!(s.apply(&missing), Err(ChangeError::NotFound(m)) if m.contains("to9")));
        let no_store = Change::CreateGatewaySender {
            options: opts(json!({"id": "to3", "remote-distributed-system-id": 3,
                "enable-persistence": true, "disk-store-name": "fast"})),
        };
        assert!(
            matches!(s.apply(&no_store), Err(ChangeError::NotFound(m)) if m.contains("`fast`"))
        );
    }

    #[test]
    fn senders_are_created_in_disk_stores_altered_and_destroyed_once_detached() {
        let mut s = base();
        for c in [
            Change::CreateDiskStore {
                name: "fast".into(),
                directory: "nvme".into(),
            },
            Change::CreateGatewaySender {
                options: opts(json!({"id": "to3", "remote-distributed-system-id": 3,
                    "enable-persistence": true, "disk-store-name": "fast"})),
            },
            Change::AlterGatewaySender {
                id: "to3".into(),
                options: opts(json!({"batch-size": 500, "batch-time-interval": 5})),
            },
            Change::AlterRegion {
                name: "orders".into(),
                gateway_sender_ids: vec!["to3".into()],
            },
        ] {
            s = s.apply(&c).unwrap();
        }
        let to3 = s.config.senders.iter().find(|d| d.id == "to3").unwrap();
        assert_eq!(to3.disk_dir, PathBuf::from("/srv/s1/nvme/to3"));
        assert_eq!((to3.batch_size, to3.batch_time_interval_ms), (500, 5));
        let in_use = Change::DestroyDiskStore {
            name: "fast".into(),
        };
        assert!(matches!(s.apply(&in_use), Err(ChangeError::InUse(m)) if m.contains("`to3`")));
        s = s
            .apply(&Change::DestroyGatewaySender { id: "to2".into() })
            .unwrap();
        assert_eq!(s.config.senders.len(), 1);
    }

    #[test]
    fn the_journal_replays_to_the_same_state_and_ids_never_move() {
        let dir = tempfile::tempdir().unwrap();
        let changes = vec![
            Change::CreateRegion {
                options: opts(json!({"name": "a", "type": "replicate"})),
            },
            Change::CreateRegion {
                options: opts(json!({"name": "b", "type": "partition", "total-num-buckets": 7})),
            },
            Change::DestroyRegion { name: "a".into() },
            Change::CreateGatewayReceiver {
                options: opts(json!({"start-port": 6000, "end-port": 6100})),
            },
        ];
        let mut s = base();
        let mut ids = RegionIds::default().assign(&s.config).unwrap();
        for c in &changes {
            s = s.apply(c).unwrap();
            ids = ids.assign(&s.config).unwrap();
        }
        let journal = Journal { changes };
        journal.save(dir.path()).unwrap();
        ids.save(dir.path()).unwrap();
        let back = Journal::load(dir.path()).unwrap();
        assert_eq!(back, journal);
        assert_eq!(back.replay(dir.path(), base().config).unwrap(), s);
        let ids_back = RegionIds::load(dir.path()).unwrap();
        assert_eq!(ids_back.names, ["orders", "a", "b"]);
        // `a` comes back under its old id; a new name takes the next one.
        let again = s
            .apply(&Change::CreateRegion {
                options: opts(json!({"name": "c", "type": "replicate"})),
            })
            .unwrap()
            .apply(&Change::CreateRegion {
                options: opts(json!({"name": "a", "type": "replicate"})),
            })
            .unwrap();
        let ids_again = ids_back.assign(&again.config).unwrap();
        assert_eq!((ids_again.id("a"), ids_again.id("c")), (Some(1), Some(3)));
    }

    #[test]
    fn a_journal_that_no_longer_applies_names_the_change() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal {
            changes: vec![Change::CreateRegion {
                options: opts(json!({"name": "orders", "type": "partition"})),
            }],
        };
        let e = journal.replay(dir.path(), base().config).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("change 1 (create region `orders`)"), "{text}");
        std::fs::write(dir.path().join(JOURNAL_FILE), "{not json").unwrap();
        assert!(matches!(
            Journal::load(dir.path()),
            Err(JournalError::Format { .. })
        ));
    }
}
