//! Running one plugin the kubelet's way (`execPlugin` in `pkg/credentialprovider/plugin`): the
//! binary with the configured `args`, the daemon's environment plus the configured `env`, a
//! `CredentialProviderRequest` on stdin, a `CredentialProviderResponse` read from stdout. Bounded
//! here: a whole-run timeout (the kubelet's 1 minute by default) after which the plugin's
//! process group is killed, and a cap on stdout (an answer beyond it kills the plugin too).
//! Stderr is discarded and no error quotes stdout: either may hold a credential.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::CredentialProviderError;
use super::config::{ProviderSpec, parse_go_duration};

/// Most entries accepted in a response's `auth` map.
const MAX_AUTH_ENTRIES: usize = 1024;

/// Bounds on one plugin run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub timeout: Duration,
    pub max_output: usize,
}

/// How a response is cached (`cacheKeyType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyType {
    Image,
    Registry,
    Global,
}

/// A checked response.
#[derive(Debug)]
pub(super) struct Response {
    pub key_type: KeyType,
    /// `None`: not given (the provider's default applies); zero (also for a negative value):
    /// do not cache.
    pub cache_duration: Option<Duration>,
    /// Match pattern → credential.
    pub auth: Vec<(String, RegistryAuth)>,
}

/// Asks `spec`'s plugin for `image` (`host[:port]/repository`).
pub(super) async fn run(
    spec: &ProviderSpec,
    image: &str,
    limits: Limits,
) -> Result<Response, CredentialProviderError> {
    let request = serde_json::json!({
        "kind": "CredentialProviderRequest",
        "apiVersion": spec.api_version,
        "image": image,
    })
    .to_string();
    let mut child = tokio::process::Command::new(&spec.bin)
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own group, so a timeout also kills what a script started.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CredentialProviderError::Spawn {
            plugin: spec.name.clone(),
            source,
        })?;
    let pid = child.id();
    let exchange = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin that ignores its stdin may close it early: not an error.
            let _ = stdin.write_all(request.as_bytes()).await;
        }
        let mut out = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            stdout
                .take(limits.max_output as u64 + 1)
                .read_to_end(&mut out)
                .await?;
        }
        if out.len() > limits.max_output {
            return Ok((None, out));
        }
        Ok::<_, std::io::Error>((Some(child.wait().await?), out))
    };
    let outcome = tokio::time::timeout(limits.timeout, exchange).await;
    let fail = |e: CredentialProviderError| {
        kill_group(pid);
        Err(e)
    };
    let (status, out) = match outcome {
        Err(_) => {
            return fail(CredentialProviderError::Timeout {
                plugin: spec.name.clone(),
                timeout: limits.timeout,
            });
        }
        Ok(Err(source)) => {
            return fail(CredentialProviderError::Spawn {
                plugin: spec.name.clone(),
                source,
            });
        }
        Ok(Ok((None, _))) => {
            return fail(CredentialProviderError::TooLarge {
                plugin: spec.name.clone(),
                limit: limits.max_output,
            });
        }
        Ok(Ok((Some(status), out))) => (status, out),
    };
    if !status.success() {
        return Err(CredentialProviderError::Exit {
            plugin: spec.name.clone(),
            status: status.to_string(),
        });
    }
    parse_response(&out, &spec.api_version).map_err(|detail| CredentialProviderError::Response {
        plugin: spec.name.clone(),
        detail,
    })
}

/// Kills the plugin's process group (the plugin is its leader) if it is still there.
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    cache_key_type: String,
    cache_duration: Option<String>,
    #[serde(default)]
    auth: BTreeMap<String, WireAuth>,
}

#[derive(Deserialize)]
struct WireAuth {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// Checks a response as the kubelet does; errors never quote the input (it holds secrets).
pub(super) fn parse_response(bytes: &[u8], api_version: &str) -> Result<Response, String> {
    let wire: Wire = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "response is not a CredentialProviderResponse ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    let short = |s: &str| s.chars().take(80).collect::<String>();
    if wire.api_version != api_version {
        return Err(format!(
            "response apiVersion {:?} is not the configured {api_version:?}",
            short(&wire.api_version)
        ));
    }
    if wire.kind != "CredentialProviderResponse" {
        return Err(format!(
            "response kind {:?} is not CredentialProviderResponse",
            short(&wire.kind)
        ));
    }
    let key_type = match wire.cache_key_type.as_str() {
        "Image" => KeyType::Image,
        "Registry" => KeyType::Registry,
        "Global" => KeyType::Global,
        other => {
            return Err(format!(
                "cacheKeyType {:?} is not Image, Registry or Global",
                short(other)
            ));
        }
    };
    let cache_duration = match wire.cache_duration.as_deref() {
        None => None,
        Some(s) => match parse_go_duration(s) {
            Some((false, d)) => Some(d),
            Some((true, _)) => Some(Duration::ZERO),
            None => return Err(format!("cacheDuration {:?} is not a duration", short(s))),
        },
    };
    if wire.auth.len() > MAX_AUTH_ENTRIES {
        return Err(format!(
            "{} auth entries (at most {MAX_AUTH_ENTRIES})",
            wire.auth.len()
        ));
    }
    let auth = wire
        .auth
        .into_iter()
        .map(|(pattern, a)| (pattern, RegistryAuth::Basic(a.username, a.password)))
        .collect();
    Ok(Response {
        key_type,
        cache_duration,
        auth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "credentialprovider.kubelet.k8s.io/v1";

    #[test]
    fn responses() {
        let r = parse_response(
            br#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1",
                "cacheKeyType":"Registry","cacheDuration":"6h",
                "auth":{"*.example.com":{"username":"u","password":"p"}}}"#,
            V1,
        )
        .unwrap();
        assert_eq!(r.key_type, KeyType::Registry);
        assert_eq!(r.cache_duration, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(
            r.auth,
            [(
                "*.example.com".to_owned(),
                RegistryAuth::Basic("u".into(), "p".into())
            )]
        );
        let r = parse_response(
            br#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1",
                "cacheKeyType":"Image","cacheDuration":"-1s","auth":{}}"#,
            V1,
        )
        .unwrap();
        assert_eq!(r.cache_duration, Some(Duration::ZERO));
    }

    #[test]
    fn bad_responses_do_not_echo_secrets() {
        let secret = "hunter2-secret";
        let cases = [
            format!(r#"{{"auth":{{"r":{{"username":"u","password":{secret}}}}}}}"#),
            format!(
                r#"{{"kind":"CredentialProviderResponse","apiVersion":"{V1}","cacheKeyType":"Image","auth":{{"r":{{"username":"u","password":7}}}},"x":"{secret}"}}"#
            ),
            format!(
                r#"{{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","cacheKeyType":"Image","auth":{{"r":{{"username":"u","password":"{secret}"}}}}}}"#
            ),
            format!(
                r#"{{"kind":"Other","apiVersion":"{V1}","cacheKeyType":"Image","auth":{{"r":{{"username":"u","password":"{secret}"}}}}}}"#
            ),
            format!(
                r#"{{"kind":"CredentialProviderResponse","apiVersion":"{V1}","cacheKeyType":"Repo","auth":{{"r":{{"username":"u","password":"{secret}"}}}}}}"#
            ),
            format!(
                r#"{{"kind":"CredentialProviderResponse","apiVersion":"{V1}","cacheKeyType":"Image","cacheDuration":"1 day","auth":{{"r":{{"username":"u","password":"{secret}"}}}}}}"#
            ),
            "not json".to_owned(),
        ];
        for case in cases {
            let err = parse_response(case.as_bytes(), V1).unwrap_err();
            assert!(!err.contains(secret), "{err}");
        }
    }
}
