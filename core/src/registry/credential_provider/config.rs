//! The kubelet's `CredentialProviderConfig` file (`--image-credential-provider-config`, YAML or
//! JSON) read and validated as the kubelet does (`validateCredentialProviderConfig`): at least
//! one provider; each with a name that is a file in the plugin directory (no `/`, no spaces,
//! not `.`/`..`, unique), a supported `apiVersion`, at least one valid `matchImages` glob and a
//! non-negative `defaultCacheDuration`. Durations are Go's (`12h`, `1m30s`, `500ms`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{CredentialProviderError, matching};

/// `apiVersion`s of the config file the kubelet reads.
const CONFIG_API_VERSIONS: &[&str] = &[
    "kubelet.config.k8s.io/v1",
    "kubelet.config.k8s.io/v1beta1",
    "kubelet.config.k8s.io/v1alpha1",
];
/// `apiVersion`s of the request/response a plugin may speak.
pub(super) const PLUGIN_API_VERSIONS: &[&str] = &[
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
];
/// Largest config file read (real ones are a few hundred bytes).
const MAX_CONFIG_FILE: u64 = 1 << 20;

/// One provider of the file, checked and resolved against the plugin directory.
#[derive(Debug, Clone)]
pub(super) struct ProviderSpec {
    pub name: String,
    pub bin: PathBuf,
    pub api_version: String,
    pub match_images: Vec<String>,
    pub default_cache: Duration,
    pub args: Vec<String>,
    /// Set on top of the daemon's own environment (these win), as the kubelet does.
    pub env: Vec<(String, String)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    api_version: String,
    kind: String,
    #[serde(default)]
    providers: Vec<FileProvider>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileProvider {
    #[serde(default)]
    name: String,
    #[serde(default)]
    match_images: Vec<String>,
    default_cache_duration: Option<String>,
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    /// Service-account token mode: needs the pod's identity, which a node daemon lacks.
    token_attributes: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvVar {
    name: String,
    value: String,
}

/// Reads and validates the config at `path`; plugins are `bin_dir/<name>`.
pub(super) fn load(
    path: &Path,
    bin_dir: &Path,
) -> Result<Vec<ProviderSpec>, CredentialProviderError> {
    let invalid = |detail: String| CredentialProviderError::Invalid {
        path: path.to_owned(),
        detail,
    };
    let read = |source| CredentialProviderError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.len() > MAX_CONFIG_FILE {
        return Err(invalid(format!("larger than {MAX_CONFIG_FILE} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    // JSON is YAML too.
    let file: File = serde_saphyr::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if !CONFIG_API_VERSIONS.contains(&file.api_version.as_str()) {
        return Err(invalid(format!(
            "apiVersion {:?} is not one of {CONFIG_API_VERSIONS:?}",
            file.api_version
        )));
    }
    if file.kind != "CredentialProviderConfig" {
        return Err(invalid(format!(
            "kind {:?} is not CredentialProviderConfig",
            file.kind
        )));
    }
    if file.providers.is_empty() {
        return Err(invalid("at least 1 item in providers is required".into()));
    }
    match std::fs::metadata(bin_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(invalid(format!("{} is not a directory", bin_dir.display()))),
        Err(e) => {
            return Err(invalid(format!(
                "plugin binary directory {}: {e}",
                bin_dir.display()
            )));
        }
    }
    let mut specs: Vec<ProviderSpec> = Vec::new();
    for p in file.providers {
        let spec = check(p, bin_dir).map_err(&invalid)?;
        if let Some(spec) = spec {
            if specs.iter().any(|s| s.name == spec.name) {
                return Err(invalid(format!("duplicate provider name {:?}", spec.name)));
            }
            specs.push(spec);
        }
    }
    Ok(specs)
}

/// One provider: `Ok(None)` for one this daemon cannot serve (service-account token mode).
fn check(p: FileProvider, bin_dir: &Path) -> Result<Option<ProviderSpec>, String> {
    let name = p.name;
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', ' ']) {
        return Err(format!(
            "provider name {name:?} must be a file name (no '/', no spaces, not '.' or '..')"
        ));
    }
    if !PLUGIN_API_VERSIONS.contains(&p.api_version.as_str()) {
        return Err(format!(
            "provider {name}: apiVersion {:?} is not one of {PLUGIN_API_VERSIONS:?}",
            p.api_version
        ));
    }
    if p.match_images.is_empty() {
        return Err(format!(
            "provider {name}: at least 1 item in matchImages is required"
        ));
    }
    for m in &p.match_images {
        matching::validate(m).map_err(|e| format!("provider {name}: matchImages: {e}"))?;
    }
    let default_cache = match p.default_cache_duration.as_deref().map(parse_go_duration) {
        None => return Err(format!("provider {name}: defaultCacheDuration is required")),
        Some(Some((false, d))) => d,
        Some(_) => {
            return Err(format!(
                "provider {name}: defaultCacheDuration must be a non-negative duration such as 12h or 1m30s"
            ));
        }
    };
    let bin = bin_dir.join(&name);
    if p.token_attributes.is_some() {
        tracing::warn!(
            provider = %name,
            "credential provider uses service account tokens (tokenAttributes), which only the kubelet has; not used"
        );
        return Ok(None);
    }
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(&bin) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
        Ok(_) => {
            return Err(format!(
                "plugin {} is not an executable file",
                bin.display()
            ));
        }
        Err(e) => return Err(format!("plugin {}: {e}", bin.display())),
    }
    Ok(Some(ProviderSpec {
        name,
        bin,
        api_version: p.api_version,
        match_images: p.match_images,
        default_cache,
        args: p.args,
        env: p.env.into_iter().map(|e| (e.name, e.value)).collect(),
    }))
}

/// Go's `time.ParseDuration` (what a Kubernetes duration field holds): `(negative, magnitude)`,
/// `None` if malformed. `"0"` alone needs no unit; otherwise each number has one of `ns`, `us`,
/// `µs`, `ms`, `s`, `m`, `h`, and numbers may have fractions (`1.5h`).
pub(super) fn parse_go_duration(s: &str) -> Option<(bool, Duration)> {
    let (negative, mut rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some((negative, Duration::ZERO));
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..num_end];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_end] {
            "ns" => 1e0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += value * nanos_per;
    }
    // Go's limit: about 290 years.
    if !total.is_finite() || total > i64::MAX as f64 {
        return None;
    }
    Some((negative, Duration::from_nanos(total as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let d = |s| parse_go_duration(s);
        assert_eq!(d("12h"), Some((false, Duration::from_secs(12 * 3600))));
        assert_eq!(d("1m30s"), Some((false, Duration::from_secs(90))));
        assert_eq!(d("1.5h"), Some((false, Duration::from_secs(5400))));
        assert_eq!(d("500ms"), Some((false, Duration::from_millis(500))));
        assert_eq!(d("0"), Some((false, Duration::ZERO)));
        assert_eq!(d("0s"), Some((false, Duration::ZERO)));
        assert_eq!(d("-5m"), Some((true, Duration::from_secs(300))));
        for bad in ["", "5", "1d", "h", ".s", "1..5s", "12 h", "-", "1h-5m"] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
    }

    fn setup(config: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let plugin = bin.join("my-provider");
        std::fs::write(&plugin, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, config).unwrap();
        (dir, path)
    }

    const GOOD: &str = "\
apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: my-provider
    matchImages:
      - \"*.dkr.ecr.*.amazonaws.com\"
      - \"127.0.0.1:5000\"
    defaultCacheDuration: \"12h\"
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    args: [get-credentials]
    env:
      - name: AWS_PROFILE
        value: temp
";

    #[test]
    fn yaml_and_json_configs() {
        let (dir, path) = setup(GOOD);
        let specs = load(&path, &dir.path().join("bin")).unwrap();
        assert_eq!(specs.len(), 1);
        let s = &specs[0];
        assert_eq!(s.name, "my-provider");
        assert_eq!(s.bin, dir.path().join("bin/my-provider"));
        assert_eq!(s.default_cache, Duration::from_secs(12 * 3600));
        assert_eq!(s.args, ["get-credentials"]);
        assert_eq!(s.env, [("AWS_PROFILE".to_owned(), "temp".to_owned())]);
        assert_eq!(s.match_images.len(), 2);

        let json = r#"{"apiVersion":"kubelet.config.k8s.io/v1beta1","kind":"CredentialProviderConfig",
            "providers":[{"name":"my-provider","matchImages":["r.io"],"defaultCacheDuration":"0s",
            "apiVersion":"credentialprovider.kubelet.k8s.io/v1alpha1"}]}"#;
        let (dir, path) = setup(json);
        let specs = load(&path, &dir.path().join("bin")).unwrap();
        assert_eq!(specs[0].default_cache, Duration::ZERO);
    }

    #[test]
    fn invalid_configs_are_refused() {
        let cases = [
            GOOD.replace("kind: CredentialProviderConfig", "kind: Other"),
            GOOD.replace("kubelet.config.k8s.io/v1\n", "kubelet.config.k8s.io/v2\n"),
            GOOD.replace("name: my-provider", "name: ../my-provider"),
            GOOD.replace("name: my-provider", "name: missing-provider"),
            GOOD.replace("    defaultCacheDuration: \"12h\"\n", ""),
            GOOD.replace("\"12h\"", "\"-1h\""),
            GOOD.replace("\"12h\"", "\"12 hours\""),
            GOOD.replace(
                "credentialprovider.kubelet.k8s.io/v1",
                "credentialprovider.kubelet.k8s.io/v9",
            ),
            GOOD.replace("\"127.0.0.1:5000\"", "\"[bad\""),
            GOOD.replace("    args:", "    unknownField: 1\n    args:"),
            format!("{GOOD}{}", &GOOD[GOOD.find("  - name").unwrap()..]),
            GOOD[..GOOD.find("providers:").unwrap()].to_owned(),
        ];
        for (i, text) in cases.iter().enumerate() {
            let (dir, path) = setup(text);
            let got = load(&path, &dir.path().join("bin"));
            assert!(
                matches!(got, Err(CredentialProviderError::Invalid { .. })),
                "case {i}: {:?}",
                got.map(|s| s.len())
            );
        }
        let (dir, path) = setup(GOOD);
        assert!(load(&path, &dir.path().join("no-bin")).is_err());
        assert!(matches!(
            load(&dir.path().join("none.yaml"), &dir.path().join("bin")),
            Err(CredentialProviderError::Read { .. })
        ));
    }

    #[test]
    fn service_account_token_providers_are_skipped() {
        let text = GOOD.replace(
            "    args:",
            "    tokenAttributes:\n      serviceAccountTokenAudience: a\n    args:",
        );
        let (dir, path) = setup(&text);
        assert!(load(&path, &dir.path().join("bin")).unwrap().is_empty());
    }
}
