//! Test harness: a real `docker-registry` (distribution 2.8) on a free localhost port with its
//! storage and log in a temp dir, plus helpers that build small OCI images and push them with
//! the crate's own `RegistryClient`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chunksnap_core::registry::{Reference, RegistryClient, RegistryConfig};
use chunksnap_format::digest::Digest;

/// A running registry, killed (by its pid) on drop.
pub struct Registry {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Registry {
    /// Starts `docker-registry` and waits until `GET /v2/` answers.
    pub fn start() -> Registry {
        Self::start_with(None, None)
    }

    /// Starts a registry on `port` (e.g. that of one stopped before), with fresh storage.
    pub fn start_on(port: u16) -> Registry {
        Self::start_with(None, Some(port))
    }

    /// Starts a registry requiring HTTP basic auth for `user` with bcrypt hash `hash`.
    pub fn start_with_htpasswd(user: &str, hash: &str) -> Registry {
        Self::start_with(Some(format!("{user}:{hash}\n")), None)
    }

    fn start_with(htpasswd: Option<String>, port: Option<u16>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = port.unwrap_or_else(|| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some(entries) = htpasswd {
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, entries).unwrap();
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                path.display()
            ));
        }
        std::fs::write(&config, yaml).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry must be installed (Debian package docker-registry)");
        let mut reg = Registry { child, addr, dir };
        reg.wait_ready();
        reg
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("docker-registry exited with {status}; log:\n{}", self.log());
            }
            if matches!(v2_status(self.addr), Some(200 | 401)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry not ready; log:\n{}",
                self.log()
            );
            // Readiness is polled; this only paces the loop between polls.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// A reference `127.0.0.1:<port>/<repo>:<tag>`.
    pub fn reference(&self, repo: &str, tag: &str) -> Reference {
        format!("{}/{repo}:{tag}", self.host()).parse().unwrap()
    }

    /// A plain-HTTP client with no docker config.
    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(RegistryConfig {
            plain_http_all: true,
            docker_config: None,
            retries: 1,
            backoff: Duration::from_millis(10),
            ..Default::default()
        })
        .unwrap()
    }

    /// Where blobs live on disk (to count them).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The HTTP status of `GET /v2/`, or None if the server does not answer yet.
fn v2_status(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A file for a test layer: path, mode, contents.
pub struct File<'a>(pub &'a str, pub u32, pub Vec<u8>);

/// A gzip-compressed layer tar holding `files` (parent dirs added), deterministic.
pub fn layer(files: &[File<'_>]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for File(path, _, _) in files {
        let mut p = std::path::Path::new(path).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    for d in dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        tar.append_data(&mut h, format!("{}/", d.display()), std::io::empty())
            .unwrap();
    }
    for File(path, mode, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        tar.append_data(&mut h, path, &data[..]).unwrap();
    }
    let raw = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

pub use chunksnap_testkit::noise;

/// Pushes an OCI image with `layers` (gzip tars) under `image`; returns the manifest digest.
pub async fn push_image(client: &RegistryClient, image: &Reference, layers: &[Vec<u8>]) -> Digest {
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    for l in layers {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&l[..])
            .read_to_end(&mut raw)
            .unwrap();
        diff_ids.push(Digest::of(&raw).to_string());
        let d = Digest::of(l);
        client
            .push_blob(image, &d, Bytes::from(l.clone()))
            .await
            .unwrap();
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d.to_string(),
            "size": l.len(),
        }));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    }))
    .unwrap();
    let cd = Digest::of(&config);
    client
        .push_blob(image, &cd, Bytes::from(config.clone()))
        .await
        .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": cd.to_string(),
            "size": config.len(),
        },
        "layers": descs,
    }))
    .unwrap();
    client
        .push_manifest(
            image,
            Bytes::from(manifest),
            "application/vnd.oci.image.manifest.v1+json",
        )
        .await
        .unwrap()
}

/// Pushes an OCI image index over already-pushed manifests `(digest, size, os/arch)`.
pub async fn push_index(
    client: &RegistryClient,
    image: &Reference,
    manifests: &[(Digest, usize, &str)],
) -> Digest {
    let entries: Vec<_> = manifests
        .iter()
        .map(|(d, size, platform)| {
            let (os, arch) = platform.split_once('/').unwrap();
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": d.to_string(),
                "size": size,
                "platform": {"os": os, "architecture": arch},
            })
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    client
        .push_manifest(
            image,
            Bytes::from(index),
            "application/vnd.oci.image.index.v1+json",
        )
        .await
        .unwrap()
}
