//! The file side of `chunksnap containerd-config`: read (or start) the config, diff, and write
//! it atomically (temp file + rename in the same directory, mode kept, previous text kept as
//! `<name>.bak`, owner and mode kept), so containerd never reads a half-written config.
//!
//! Everything here is blocking file and process I/O; async callers run [`run`] under
//! `spawn_blocking`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{ConfigVersion, Error, Target, edit};

/// Mode of a config file chunksnap creates.
const NEW_FILE_MODE: u32 = 0o644;

/// Inputs of [`run`]: `chunksnap [--config F] [--address SOCK] containerd-config [--dry-run]
/// [--containerd-config PATH] [--config-version 2|3]` (the socket is the daemon's `address`).
#[derive(Clone, Debug)]
pub struct Options {
    /// containerd config file (`--containerd-config`, default `/etc/containerd/config.toml`).
    pub config_path: PathBuf,
    /// Plugin name and socket (the daemon config's `address`).
    pub target: Target,
    /// Only compute the diff; write nothing (`--dry-run`).
    pub dry_run: bool,
    /// Schema version for a new (missing or empty) file (`--config-version`). `None`: ask
    /// `containerd_bin`, and use 2 when that fails.
    pub new_file_version: Option<ConfigVersion>,
    /// containerd binary asked for its version when the file is new (default `containerd`).
    pub containerd_bin: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config_path: PathBuf::from(super::DEFAULT_CONFIG_PATH),
            target: Target::default(),
            dry_run: false,
            new_file_version: None,
            containerd_bin: PathBuf::from("containerd"),
        }
    }
}

/// What [`run`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The file that was (or would be) written; symlinks are resolved.
    pub path: PathBuf,
    /// Whether the config needs (or in a dry run, would need) a change.
    pub changed: bool,
    /// Whether the file did not exist before.
    pub created: bool,
    /// Whether the file was written (false in a dry run or when nothing changed).
    pub written: bool,
    /// Where the previous text was kept, when the file was rewritten.
    pub backup: Option<PathBuf>,
    /// Unified diff of the change (empty when nothing changed).
    pub diff: String,
    /// Settings that keep some pods off chunksnap (see [`super::Edit::warnings`]).
    pub warnings: Vec<String>,
    /// Schema version of the edited config.
    pub version: ConfigVersion,
}

impl Outcome {
    /// containerd reads its config only at start, so a changed file needs a restart.
    pub fn restart_needed(&self) -> bool {
        self.changed
    }

    /// One line for the operator (and for the chart's init container log).
    pub fn summary(&self) -> String {
        let path = self.path.display();
        match (self.changed, self.written) {
            (false, _) => format!("{path} already uses chunksnap; no containerd restart needed"),
            (true, true) => format!("{path} updated; restart containerd to apply"),
            (true, false) => format!("{path} needs the change above (dry run: nothing written)"),
        }
    }
}

/// Reads the config (a missing file counts as empty), applies [`edit`], and unless
/// `dry_run` writes the result atomically when it changed.
pub fn run(options: &Options) -> Result<Outcome, Error> {
    let path = resolve(&options.config_path)?;
    let (original, created) = match fs::read_to_string(&path) {
        Ok(text) => (text, false),
        Err(err) if err.kind() == io::ErrorKind::NotFound => (String::new(), true),
        Err(source) => return Err(io_err("read", &path, source)),
    };
    let new_file_version = match options.new_file_version {
        Some(version) => version,
        None if original.trim().is_empty() => {
            detect_version(&options.containerd_bin).unwrap_or(ConfigVersion::V2)
        }
        // The file's own `version` key decides.
        None => ConfigVersion::V2,
    };
    let edited = edit(&original, &options.target, new_file_version)?;
    let diff = if edited.changed {
        unified_diff(&path, &original, &edited.text)
    } else {
        String::new()
    };
    let mut backup = None;
    let written = edited.changed && !options.dry_run;
    if written {
        backup = write_atomic(&path, &edited.text, !created)?;
    }
    Ok(Outcome {
        path,
        changed: edited.changed,
        created,
        written,
        backup,
        diff,
        warnings: edited.warnings,
        version: edited.version,
    })
}

/// Config schema version matching the installed containerd (`containerd --version`).
/// `None` when the binary cannot be run or its output is not understood.
pub fn detect_version(containerd_bin: &Path) -> Option<ConfigVersion> {
    let output = Command::new(containerd_bin)
        .arg("--version")
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    parse_containerd_version(&String::from_utf8_lossy(&output.stdout))
}

/// Parses `containerd --version` output, e.g.
/// `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3` or
/// `containerd github.com/containerd/containerd/v2 v2.0.2 c507a02…`.
pub fn parse_containerd_version(output: &str) -> Option<ConfigVersion> {
    let release = output.split_whitespace().nth(2)?;
    let major = release.trim_start_matches('v').split('.').next()?;
    match major.parse::<u32>().ok()? {
        0 | 1 => Some(ConfigVersion::V2),
        _ => Some(ConfigVersion::V3),
    }
}

/// Unified diff (3 lines of context) labelled with `path`.
pub fn unified_diff(path: &Path, old: &str, new: &str) -> String {
    let label = path.display().to_string();
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(
            &format!("{label} (current)"),
            &format!("{label} (chunksnap)"),
        )
        .to_string()
}

/// Follows a symlinked config to the file it names, so the rename replaces that file and
/// not the link.
fn resolve(path: &Path) -> Result<PathBuf, Error> {
    match fs::canonicalize(path) {
        Ok(real) => Ok(real),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(path.to_path_buf()),
        Err(source) => Err(io_err("resolve", path, source)),
    }
}

/// Writes `text` to a temp file next to `path`, keeps the old file as `<name>.bak` (when
/// `backup`), then renames the temp file over `path` and syncs the directory.
fn write_atomic(path: &Path, text: &str, backup: bool) -> Result<Option<PathBuf>, Error> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|source| io_err("create directory", &dir, source))?;
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.toml".to_owned());
    let existing = fs::metadata(path).ok();
    let mode = existing
        .as_ref()
        .map_or(NEW_FILE_MODE, |meta| meta.permissions().mode() & 0o7777);

    let tmp = dir.join(format!(".{name}.chunksnap-{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|source| io_err("create", &tmp, source))?;
        file.write_all(text.as_bytes())
            .map_err(|source| io_err("write", &tmp, source))?;
        if let Some(meta) = &existing {
            std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))
                .map_err(|source| io_err("chown", &tmp, source))?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|source| io_err("chmod", &tmp, source))?;
        file.sync_all()
            .map_err(|source| io_err("sync", &tmp, source))?;

        let backup_path = if backup {
            let backup_path = dir.join(format!("{name}.bak"));
            fs::copy(path, &backup_path).map_err(|source| io_err("back up", path, source))?;
            Some(backup_path)
        } else {
            None
        };
        fs::rename(&tmp, path).map_err(|source| io_err("rename", &tmp, source))?;
        // The rename is durable only once the directory entry is.
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| io_err("sync", &dir, source))?;
        Ok(backup_path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(path: &Path) -> Options {
        Options {
            config_path: path.to_path_buf(),
            new_file_version: Some(ConfigVersion::V2),
            ..Options::default()
        }
    }

    #[test]
    fn parses_containerd_versions() {
        let debian = "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3";
        assert_eq!(parse_containerd_version(debian), Some(ConfigVersion::V2));
        let v17 = "containerd github.com/containerd/containerd v1.7.24 88bf19b2";
        assert_eq!(parse_containerd_version(v17), Some(ConfigVersion::V2));
        let v2 = "containerd github.com/containerd/containerd/v2 v2.0.2 c507a0257ea6";
        assert_eq!(parse_containerd_version(v2), Some(ConfigVersion::V3));
        assert_eq!(parse_containerd_version("garbage"), None);
    }

    #[test]
    fn missing_file_is_created_then_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containerd/config.toml");
        let first = run(&options(&path)).unwrap();
        assert!(first.changed && first.created && first.written && first.restart_needed());
        assert_eq!(first.backup, None);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("version = 2\n"), "{text}");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );

        let second = run(&options(&path)).unwrap();
        assert!(!second.changed && !second.written && !second.restart_needed());
        assert!(second.diff.is_empty());
        assert!(second.summary().contains("no containerd restart needed"));
        // Only the config itself: no temp file left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("config.toml")]);
    }

    #[test]
    fn dry_run_writes_nothing_and_shows_the_diff() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let original = "version = 2\n# keep me\n";
        fs::write(&path, original).unwrap();
        let outcome = run(&Options {
            dry_run: true,
            ..options(&path)
        })
        .unwrap();
        assert!(outcome.changed && !outcome.written);
        assert_eq!(fs::read_to_string(&path).unwrap(), original);
        assert!(
            outcome.diff.contains("+[proxy_plugins.chunksnap]"),
            "{}",
            outcome.diff
        );
        assert!(outcome.diff.contains("+snapshotter = \"chunksnap\""));
        assert!(outcome.diff.contains("(current)") && outcome.diff.contains("(chunksnap)"));
        assert!(outcome.summary().contains("dry run"));
    }

    #[test]
    fn rewrite_keeps_mode_and_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let original = "version = 2\n";
        fs::write(&path, original).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let outcome = run(&options(&path)).unwrap();
        assert!(outcome.written && !outcome.created);
        let backup = outcome.backup.unwrap();
        assert_eq!(backup, dir.path().join("config.toml.bak"));
        assert_eq!(fs::read_to_string(&backup).unwrap(), original);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(fs::read_to_string(&path).unwrap().contains("chunksnap"));
    }

    #[test]
    fn symlinked_config_is_edited_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.toml");
        let link = dir.path().join("config.toml");
        fs::write(&real, "version = 2\n").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let outcome = run(&options(&link)).unwrap();
        assert_eq!(outcome.path, fs::canonicalize(&real).unwrap());
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(fs::read_to_string(&link).unwrap().contains("chunksnap"));
    }

    #[test]
    fn invalid_toml_is_an_error_and_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, "version = = 2\n").unwrap();
        assert!(matches!(run(&options(&path)), Err(Error::Parse(_))));
        assert_eq!(fs::read_to_string(&path).unwrap(), "version = = 2\n");
    }

    #[test]
    fn containerd_binary_is_asked_for_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("containerd");
        fs::write(
            &fake,
            "#!/bin/sh\necho 'containerd github.com/containerd/containerd/v2 v2.1.0 e29f23e'\n",
        )
        .unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(detect_version(&fake), Some(ConfigVersion::V3));
        assert_eq!(detect_version(&dir.path().join("missing")), None);

        // A new file takes the detected version.
        let path = dir.path().join("config.toml");
        let outcome = run(&Options {
            config_path: path.clone(),
            containerd_bin: fake,
            ..Options::default()
        })
        .unwrap();
        assert_eq!(outcome.version, ConfigVersion::V3);
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .starts_with("version = 3\n")
        );
    }
}
