//! Editing containerd's config so that its CRI plugin uses chunksnap as the snapshotter.
//!
//! This module owns the TOML edit (`chunksnap containerd-config`): it registers the proxy plugin
//! and selects it for CRI, idempotently, keeping comments and every unrelated setting (the edit
//! goes through `toml_edit`, never through a re-serialised struct). [`file`] owns reading,
//! the dry-run diff and the atomic write.
//!
//! containerd 1.6/1.7 configs (`version = 2`) select the snapshotter under
//! `plugins."io.containerd.grpc.v1.cri".containerd`; containerd 2.x configs (`version = 3`) under
//! `plugins."io.containerd.cri.v1.images"`. Both register the proxy plugin the same way:
//!
//! ```toml
//! [proxy_plugins.chunksnap]
//!   type = "snapshot"
//!   address = "/run/chunksnap/chunksnap.sock"
//! ```
//!
//! ```
//! use chunksnap::install::containerd_config::{edit, ConfigVersion, Target};
//! let out = edit("version = 2\n", &Target::default(), ConfigVersion::V2).unwrap();
//! assert!(out.changed);
//! let again = edit(&out.text, &Target::default(), ConfigVersion::V2).unwrap();
//! assert!(!again.changed);
//! ```

pub mod file;

use std::path::PathBuf;

use toml_edit::{DocumentMut, Item, Table, TableLike, Value};

pub use file::{Options, Outcome, detect_version, parse_containerd_version, run, unified_diff};

/// Proxy plugin name containerd knows chunksnap by.
pub const DEFAULT_PLUGIN_NAME: &str = "chunksnap";
/// Socket chunksnap serves the Snapshots API on.
pub const DEFAULT_SOCKET: &str = "/run/chunksnap/chunksnap.sock";
/// containerd's default config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/containerd/config.toml";

/// CRI plugin table of containerd 1.6/1.7 (config version 2).
const CRI_V2: &str = "io.containerd.grpc.v1.cri";
/// CRI image service table of containerd 2.x (config version 3).
const CRI_IMAGES_V3: &str = "io.containerd.cri.v1.images";
/// CRI runtime service table of containerd 2.x (config version 3).
const CRI_RUNTIME_V3: &str = "io.containerd.cri.v1.runtime";

/// Errors of reading, editing or writing a containerd config.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("containerd config is not valid TOML: {0}")]
    Parse(#[from] toml_edit::TomlError),
    #[error(
        "containerd config has settings but no `version` key (config version 1); \
         migrate it first (`containerd config migrate`)"
    )]
    VersionOne,
    #[error("containerd config `version` is {0}; chunksnap supports versions 2 and 3")]
    UnsupportedVersion(String),
    #[error("`{0}` in the containerd config is not a table")]
    NotATable(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// containerd config schema version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigVersion {
    /// `version = 2`: containerd 1.6 and 1.7 (2.x migrates it on load).
    V2,
    /// `version = 3`: containerd 2.x.
    V3,
}

impl ConfigVersion {
    /// The value of the config's `version` key.
    pub fn number(self) -> i64 {
        match self {
            ConfigVersion::V2 => 2,
            ConfigVersion::V3 => 3,
        }
    }
}

impl std::str::FromStr for ConfigVersion {
    type Err = Error;

    /// `"2"` or `"3"` (for a `--config-version` flag).
    fn from_str(text: &str) -> Result<Self, Error> {
        match text.trim() {
            "2" => Ok(ConfigVersion::V2),
            "3" => Ok(ConfigVersion::V3),
            other => Err(Error::UnsupportedVersion(other.to_owned())),
        }
    }
}

/// What the config should point containerd at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Proxy plugin (and CRI snapshotter) name.
    pub plugin: String,
    /// Unix socket of the chunksnap daemon.
    pub socket: String,
}

impl Default for Target {
    fn default() -> Self {
        Target {
            plugin: DEFAULT_PLUGIN_NAME.to_owned(),
            socket: DEFAULT_SOCKET.to_owned(),
        }
    }
}

/// Result of [`edit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edit {
    /// The edited config text (equal to the input when nothing changed).
    pub text: String,
    /// Whether `text` differs from the input, i.e. whether containerd must be restarted.
    pub changed: bool,
    /// The schema version the edit used.
    pub version: ConfigVersion,
    /// Settings chunksnap leaves alone but that keep some pods off chunksnap.
    pub warnings: Vec<String>,
}

/// Edits `original` (a containerd config; empty for a new file) so that containerd registers
/// the chunksnap proxy plugin and CRI uses it with snapshot annotations enabled.
///
/// The schema version comes from the file's `version` key; `new_file_version` is used only
/// when the file has no settings at all. Applying the edit to its own output changes nothing.
pub fn edit(
    original: &str,
    target: &Target,
    new_file_version: ConfigVersion,
) -> Result<Edit, Error> {
    let mut doc: DocumentMut = original.parse()?;
    let version = match doc.get("version") {
        Some(item) => match item.as_integer() {
            Some(2) => ConfigVersion::V2,
            Some(3) => ConfigVersion::V3,
            _ => {
                return Err(Error::UnsupportedVersion(
                    item.to_string().trim().to_owned(),
                ));
            }
        },
        None if doc.as_table().is_empty() => {
            // A file of only comments keeps them on top, above the new `version` line.
            let comments = doc.trailing().as_str().unwrap_or_default().to_owned();
            doc.set_trailing("");
            doc.insert("version", toml_edit::value(new_file_version.number()));
            if let Some(mut key) = doc.as_table_mut().key_mut("version") {
                key.leaf_decor_mut().set_prefix(comments);
            }
            new_file_version
        }
        None => return Err(Error::VersionOne),
    };

    // New table headers go after everything that is there, in the order created.
    let mut next_position = last_position(doc.as_table()) + 1;
    let root: &mut dyn TableLike = doc.as_table_mut();
    let proxy = table_at(root, &["proxy_plugins", &target.plugin], &mut next_position)?;
    set(proxy, "type", "snapshot");
    set(proxy, "address", target.socket.as_str());

    let cri_path: &[&str] = match version {
        ConfigVersion::V2 => &["plugins", CRI_V2, "containerd"],
        ConfigVersion::V3 => &["plugins", CRI_IMAGES_V3],
    };
    let cri = table_at(doc.as_table_mut(), cri_path, &mut next_position)?;
    set(cri, "snapshotter", target.plugin.as_str());
    set(cri, "disable_snapshot_annotations", false);

    let warnings = runtime_snapshotter_warnings(&doc, version, &target.plugin);
    let text = doc.to_string();
    Ok(Edit {
        changed: text != original,
        text,
        version,
        warnings,
    })
}

/// Walks (creating where missing) the tables along `path`; dotted, inline and header forms of
/// existing tables are all kept as they are.
fn table_at<'a>(
    mut current: &'a mut dyn TableLike,
    path: &[&str],
    next_position: &mut isize,
) -> Result<&'a mut dyn TableLike, Error> {
    for (depth, key) in path.iter().enumerate() {
        if !current.contains_key(key) {
            let mut table = Table::new();
            // Intermediate tables get no header of their own; a dotted parent keeps its
            // children dotted so the file keeps its style.
            let leaf = depth + 1 == path.len();
            table.set_implicit(!leaf);
            table.set_dotted(current.is_dotted());
            if leaf {
                table.set_position(Some(*next_position));
                *next_position += 1;
            }
            current.insert(key, Item::Table(table));
        }
        current = current
            .get_mut(key)
            .and_then(Item::as_table_like_mut)
            .ok_or_else(|| Error::NotATable(dotted_path(&path[..=depth])))?;
    }
    Ok(current)
}

/// Highest document position of any table header under `table`.
fn last_position(table: &Table) -> isize {
    table
        .iter()
        .flat_map(|(_, item)| match item {
            Item::Table(t) => vec![t],
            Item::ArrayOfTables(array) => array.iter().collect(),
            _ => Vec::new(),
        })
        .map(|t| t.position().unwrap_or(0).max(last_position(t)))
        .max()
        .unwrap_or(0)
}

/// Sets `key` to `value` unless it already holds that value; a replaced value keeps its
/// surrounding whitespace and trailing comment.
fn set(table: &mut dyn TableLike, key: &str, value: impl Into<Value>) {
    let new: Value = value.into();
    match table.get_mut(key) {
        Some(Item::Value(old)) => {
            if same_value(old, &new) {
                return;
            }
            let decor = old.decor().clone();
            *old = new;
            *old.decor_mut() = decor;
        }
        _ => {
            table.insert(key, Item::Value(new));
        }
    }
}

/// Compares scalars by value, so `'chunksnap'` equals `"chunksnap"`.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a.value() == b.value(),
        (Value::Boolean(a), Value::Boolean(b)) => a.value() == b.value(),
        (Value::Integer(a), Value::Integer(b)) => a.value() == b.value(),
        _ => false,
    }
}

/// Runtimes may name their own snapshotter, which overrides the CRI default for their pods.
fn runtime_snapshotter_warnings(
    doc: &DocumentMut,
    version: ConfigVersion,
    plugin: &str,
) -> Vec<String> {
    let runtimes_path: &[&str] = match version {
        ConfigVersion::V2 => &["plugins", CRI_V2, "containerd", "runtimes"],
        ConfigVersion::V3 => &["plugins", CRI_RUNTIME_V3, "containerd", "runtimes"],
    };
    let mut item = doc.as_item();
    for key in runtimes_path {
        match item.get(key) {
            Some(next) => item = next,
            None => return Vec::new(),
        }
    }
    let Some(runtimes) = item.as_table_like() else {
        return Vec::new();
    };
    runtimes
        .iter()
        .filter_map(|(name, runtime)| {
            let snapshotter = runtime.get("snapshotter")?.as_str()?;
            (!snapshotter.is_empty() && snapshotter != plugin).then(|| {
                format!(
                    "runtime `{name}` sets its own snapshotter `{snapshotter}`; \
                     its pods will not use {plugin}"
                )
            })
        })
        .collect()
}

fn dotted_path(path: &[&str]) -> String {
    path.iter()
        .map(|key| {
            if key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                (*key).to_owned()
            } else {
                format!("\"{key}\"")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests;
