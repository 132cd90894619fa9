//! Credentials from a docker `config.json`: `auths` (base64 `auth` or `username`/`password`),
//! `credHelpers` and `credsStore`, through the `docker_credential` crate. No credential is ever
//! logged or put into an error message; failures name only the registry and the helper.

use std::path::{Path, PathBuf};

use docker_credential::{CredentialRetrievalError, DockerCredential};
use oci_client::secrets::RegistryAuth;

use super::RegistryError;

/// The default docker config: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker").join("config.json"))
}

/// The keys a registry host may be stored under in `config.json`, most specific first.
fn candidate_keys(registry: &str) -> Vec<String> {
    if matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        return vec![
            "https://index.docker.io/v1/".to_owned(),
            registry.to_owned(),
        ];
    }
    vec![
        registry.to_owned(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ]
}

/// Looks up the credential for `registry` in the config file at `path` (blocking: it may run a
/// credential helper). A missing default file means anonymous access.
pub(super) fn lookup(path: Option<&Path>, registry: &str) -> Result<RegistryAuth, RegistryError> {
    let Some(path) = path else {
        return Ok(RegistryAuth::Anonymous);
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RegistryAuth::Anonymous),
        Err(e) => {
            return Err(RegistryError::Credentials {
                registry: registry.to_owned(),
                detail: format!("cannot read {}: {e}", path.display()),
            });
        }
    };
    for key in candidate_keys(registry) {
        match docker_credential::get_credential_from_reader(&bytes[..], &key) {
            Ok(DockerCredential::UsernamePassword(user, pass)) => {
                return Ok(RegistryAuth::Basic(user, pass));
            }
            Ok(DockerCredential::IdentityToken(_)) => {
                // An identity token is an OAuth2 refresh token, which oci-client cannot exchange.
                tracing::warn!(
                    registry,
                    "docker config holds an identity token, which is not supported; using anonymous access"
                );
                return Ok(RegistryAuth::Anonymous);
            }
            Err(CredentialRetrievalError::NoCredentialConfigured) => continue,
            Err(CredentialRetrievalError::HelperFailure { helper, .. }) => {
                // The helper's stdout/stderr could echo secrets: report only its name.
                tracing::debug!(registry, helper, "credential helper had no credential");
                continue;
            }
            Err(e) => {
                let detail = match e {
                    CredentialRetrievalError::HelperCommunicationError => {
                        "cannot run the credential helper".to_owned()
                    }
                    CredentialRetrievalError::MalformedHelperResponse => {
                        "malformed credential helper response".to_owned()
                    }
                    CredentialRetrievalError::CredentialDecodingError => {
                        "cannot decode the auth field".to_owned()
                    }
                    CredentialRetrievalError::CredentialMismatchError => {
                        "auth field does not match username/password".to_owned()
                    }
                    _ => format!("cannot read {}", path.display()),
                };
                return Err(RegistryError::Credentials {
                    registry: registry.to_owned(),
                    detail,
                });
            }
        }
    }
    Ok(RegistryAuth::Anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(json: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), json).unwrap();
        f
    }

    #[test]
    fn base64_auth_and_username_password() {
        // "user:pa:ss" base64-encoded.
        let f = write(
            r#"{"auths":{"reg.example:5000":{"auth":"dXNlcjpwYTpzcw=="},
                "https://other.example":{"username":"u","password":"p"}}}"#,
        );
        assert_eq!(
            lookup(Some(f.path()), "reg.example:5000").unwrap(),
            RegistryAuth::Basic("user".into(), "pa:ss".into())
        );
        assert_eq!(
            lookup(Some(f.path()), "other.example").unwrap(),
            RegistryAuth::Basic("u".into(), "p".into())
        );
        assert_eq!(
            lookup(Some(f.path()), "none.example").unwrap(),
            RegistryAuth::Anonymous
        );
    }

    #[test]
    fn missing_file_is_anonymous_and_errors_hide_secrets() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            lookup(Some(&dir.path().join("nope.json")), "r").unwrap(),
            RegistryAuth::Anonymous
        );
        let f = write(r#"{"auths":{"r":{"auth":"%%%secret"}}}"#);
        let err = lookup(Some(f.path()), "r").unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn missing_helper_program_is_an_error() {
        let f = write(r#"{"credHelpers":{"r":"chunksnap-test-no-such-helper"}}"#);
        assert!(matches!(
            lookup(Some(f.path()), "r"),
            Err(RegistryError::Credentials { .. })
        ));
    }
}
