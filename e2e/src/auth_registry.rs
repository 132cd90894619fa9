//! A docker-registry behind htpasswd (HTTP basic) auth, serving another registry's storage: the
//! registry the credential tests pull from. Killed on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::registry::REGISTRY_BIN;
use crate::util::{Poller, http_get_status};

/// A running authenticated registry.
pub struct AuthRegistry {
    child: Child,
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AuthRegistry {
    /// Serves `storage` on `host` (`127.0.0.1:PORT`) to `user` with the bcrypt `hash` of its
    /// password; config, htpasswd and log (appended across restarts) live in `dir`. Returns once
    /// `GET /v2/` answers 401 (up, and asking for credentials).
    pub async fn start(
        dir: &Path,
        host: &str,
        storage: &Path,
        user: &str,
        hash: &str,
    ) -> Result<Self> {
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, format!("{user}:{hash}\n"))?;
        let config = dir.join("auth-registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {host}\nauth:\n  htpasswd:\n    realm: e2e\n    path: {}\n",
                storage.display(),
                htpasswd.display()
            ),
        )?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("auth-registry.log"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {REGISTRY_BIN}"))?;
        let registry = Self { child };
        let url = format!("http://{host}/v2/");
        let mut poll = Poller::new("auth registry GET /v2/", Duration::from_secs(30));
        while http_get_status(&url).await.ok() != Some(401) {
            poll.tick().await?;
        }
        Ok(registry)
    }
}
