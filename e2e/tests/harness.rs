//! Self-tests of the harness against the real services.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use chunksnap_e2e::treecmp::{CompareOptions, compare_trees, scan_tree};
use chunksnap_e2e::util::{http_get_range, http_get_with};
use chunksnap_e2e::{Containerd, Env, Registry, Snapshotter, TestImages};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_push_pull_and_byte_counting() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let registry = Registry::start().await?;
    let images = TestImages::new(&registry)?;
    let img = images.features().await?;
    assert_eq!(img.layers.len(), 2);
    registry.reset_counters();

    let layer = &img.layers[0];
    let url = format!(
        "http://{}/v2/{}/blobs/{}",
        registry.host(),
        img.repository,
        layer.digest
    );
    let (status, body) = http_get_range(&url, None).await?;
    assert_eq!(status, 200);
    assert_eq!(body.len() as u64, layer.size);
    assert_eq!(body.as_ref(), std::fs::read(&layer.path)?.as_slice());

    let (status, body) = http_get_range(&url, Some("bytes=10-109")).await?;
    assert_eq!(status, 206);
    assert_eq!(body.len(), 100);

    let manifest_url = format!(
        "http://{}/v2/{}/manifests/{}",
        registry.host(),
        img.repository,
        img.manifest_digest
    );
    let accept = ("accept", "application/vnd.oci.image.manifest.v1+json");
    let (status, body) = http_get_with(&manifest_url, &[accept]).await?;
    assert_eq!(status, 200, "pushed manifest keeps its digest: {body:?}");

    let reqs = registry.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=10-109"));
    assert_eq!(reqs[1].bytes, 100);
    assert_eq!(registry.blob_bytes_served(), layer.size + 100);
    assert!(registry.bytes_served() > registry.blob_bytes_served());
    registry.reset_counters();
    assert_eq!(registry.bytes_served(), 0);

    // A custom image from raw tars, as scenarios build them.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(6);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "custom.txt", &b"custom"[..])?;
    let custom = images
        .push_tars("custom", "t1", vec![b.into_inner()?], Default::default())
        .await?;
    let url = format!(
        "http://{}/v2/custom/blobs/{}",
        registry.host(),
        custom.layers[0].digest
    );
    let (status, body) = http_get_range(&url, None).await?;
    assert_eq!((status, body.len() as u64), (200, custom.layers[0].size));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_overlayfs_cri_pull_run_and_oracle() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let t = Instant::now();
    let env = Env::start(Snapshotter::Overlayfs).await?;
    eprintln!(
        "timing: env (registry + pause image + containerd): {:?}",
        t.elapsed()
    );
    let cri = env.containerd.cri().await?;
    let native = env.containerd.native().await?;

    // features: two layers, whiteouts, everything the oracle must see.
    let t = Instant::now();
    let features = env.images.features().await?;
    eprintln!("timing: features image build + push: {:?}", t.elapsed());
    env.registry.reset_counters();
    let t = Instant::now();
    let id = cri.pull_image(&features.reference).await?;
    eprintln!("timing: CRI pull features: {:?}", t.elapsed());
    assert_eq!(id, features.config_digest);
    let layer_bytes: u64 = features.layers.iter().map(|l| l.size).sum();
    let served = env.registry.blob_bytes_served();
    ensure!(
        served >= layer_bytes,
        "served {served} < layers {layer_bytes}"
    );

    let dirs = native.overlay_layer_dirs(&features.reference).await?;
    assert_eq!(dirs.len(), 2);
    for d in &dirs {
        assert!(d.starts_with(env.containerd.overlayfs_root()), "{d:?}");
    }
    let top = scan_tree(&dirs[1])?;
    let wh = top
        .get(Path::new("hello.txt"))
        .context("whiteout missing")?;
    assert!(wh.is_whiteout(), "{wh:?}");
    let opaque = top.get(Path::new("dir")).context("dir missing")?;
    assert_eq!(
        opaque
            .xattrs
            .get(b"trusted.overlay.opaque".as_slice())
            .map(Vec::as_slice),
        Some(b"y".as_slice())
    );
    let bottom = scan_tree(&dirs[0])?;
    let cap = bottom.get(Path::new("cap-bin")).context("cap-bin")?;
    assert!(cap.xattrs.contains_key(b"security.capability".as_slice()));
    let ns = bottom.get(Path::new("mtime-ns")).context("mtime-ns")?;
    assert_eq!(ns.mtime, (1_700_000_000, 123_456_789));
    check_features_bottom(&bottom)?;
    let loop_wh = top
        .get(Path::new("dev/loop-like"))
        .context("dev whiteout")?;
    assert!(loop_wh.is_whiteout());

    let snaps = native.snapshots("overlayfs", vec![]).await?;
    let chain = native.chain_ids(&features.reference).await?;
    for c in &chain {
        assert!(snaps.iter().any(|s| &s.name == c), "no snapshot {c}");
    }

    // Oracle: a layer equals itself, and a tweaked copy shows exactly the tweaks.
    let bottom_dir = dirs[0].clone();
    tokio::task::spawn_blocking(move || oracle_self_test(&bottom_dir)).await??;

    // debian-v1: pull and run a container, read a file through exec.
    let t = Instant::now();
    let debian = env.images.debian_v1().await?;
    eprintln!("timing: debian-v1 image build + push: {:?}", t.elapsed());
    let t = Instant::now();
    cri.pull_image(&debian.reference).await?;
    eprintln!("timing: CRI pull debian-v1: {:?}", t.elapsed());
    let t = Instant::now();
    let version = cri
        .run_and_read(&debian.reference, "/etc/debian_version")
        .await?;
    eprintln!("timing: run pod + container + exec: {:?}", t.elapsed());
    assert!(
        version.starts_with(b"12."),
        "{:?}",
        String::from_utf8_lossy(&version)
    );

    // debian-v2 carries the bookworm-security upgrade of apt (2.6.1 -> 2.6.2).
    let t = Instant::now();
    let debian2 = env.images.debian_v2().await?;
    eprintln!("timing: debian-v2 image build + push: {:?}", t.elapsed());
    let t = Instant::now();
    cri.pull_image(&debian2.reference).await?;
    eprintln!("timing: CRI pull debian-v2: {:?}", t.elapsed());
    let status = cri
        .run_and_read(&debian2.reference, "/var/lib/dpkg/status")
        .await?;
    let status = String::from_utf8_lossy(&status);
    let apt = status
        .split("\n\n")
        .find(|p| p.starts_with("Package: apt\n"))
        .context("no apt in dpkg status")?;
    assert!(apt.contains("\nVersion: 2.6.2\n"), "{apt}");

    cri.remove_image(&debian.reference).await?;
    let names: Vec<String> = native.images().await?.into_iter().map(|i| i.name).collect();
    assert!(!names.contains(&debian.reference), "{names:?}");
    assert!(names.contains(&debian2.reference), "{names:?}");
    Ok(())
}

/// What containerd's applier made of the crafted tar features.
fn check_features_bottom(
    t: &std::collections::BTreeMap<std::path::PathBuf, chunksnap_e2e::treecmp::Node>,
) -> Result<()> {
    use chunksnap_e2e::treecmp::Kind;
    use std::os::unix::ffi::OsStrExt;
    let get = |p: &[u8]| {
        t.get(Path::new(std::ffi::OsStr::from_bytes(p)))
            .with_context(|| format!("{} missing", String::from_utf8_lossy(p)))
    };
    assert_eq!(get(b"owned-large-uid")?.uid, 3_000_000_000);
    assert_eq!((get(b"owned")?.uid, get(b"owned")?.gid), (1234, 5678));
    assert_eq!(get(b"setuid")?.mode, 0o4755);
    assert_eq!(get(b"setgid")?.mode, 0o2755);
    assert_eq!(get(b"sticky")?.mode, 0o1777);
    assert_eq!(get(b"fifo")?.kind, Kind::Fifo);
    assert_eq!(get(b"dev/null-like")?.rdev, Some((1, 3)));
    assert_eq!(get(b"dev/loop-like")?.kind, Kind::Block);
    assert_eq!(get(b"hard-hello")?.inode, get(b"hello.txt")?.inode);
    assert_eq!(
        get(b"link-to-hello")?.link_target.as_deref(),
        Some(Path::new("hello.txt"))
    );
    assert_eq!(
        get(b"xattrs")?
            .xattrs
            .get(b"user.foo".as_slice())
            .map(Vec::as_slice),
        Some(b"bar".as_slice())
    );
    get(&chunksnap_e2e::features::long_path())?;
    get(b"non-utf8-\xff\xfe.txt")?;
    assert_eq!(get(b"big.bin")?.size, 8 << 20);
    Ok(())
}

fn oracle_self_test(layer: &Path) -> Result<()> {
    let opts = CompareOptions::default();
    assert_eq!(compare_trees(layer, layer, &opts)?, vec![]);
    let tmp = tempfile::tempdir()?;
    let copy = tmp.path().join("copy");
    let st = Command::new("cp")
        .arg("-a")
        .arg(layer)
        .arg(&copy)
        .status()?;
    ensure!(st.success(), "cp -a");
    let diffs = compare_trees(layer, &copy, &opts)?;
    assert_eq!(diffs, vec![], "cp -a copy differs");

    std::fs::write(copy.join("text.txt"), b"tweaked")?;
    let diffs = compare_trees(
        layer,
        &copy,
        &CompareOptions {
            ignore_dir_mtime: true,
            ..Default::default()
        },
    )?;
    let paths: std::collections::BTreeSet<_> = diffs.iter().map(|d| d.path.as_path()).collect();
    // text.txt is hardlinked to dir/hard-text: both change.
    assert_eq!(
        paths.into_iter().collect::<Vec<_>>(),
        vec![Path::new("dir/hard-text"), Path::new("text.txt")],
        "{diffs:?}"
    );
    assert!(diffs.iter().any(|d| d.what.starts_with("content")));
    Ok(())
}

/// Two containerds ("nodes") side by side on one registry: distinct roots, sockets and ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containerds_side_by_side() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let env = Env::start(Snapshotter::Overlayfs).await?;
    let second = Containerd::start(&env.containerd_config(Snapshotter::Overlayfs)).await?;
    assert_ne!(env.containerd.socket(), second.socket());
    let features = env.images.features().await?;
    let (a, b) = (env.containerd.cri().await?, second.cri().await?);
    let (ia, ib) = tokio::try_join!(
        a.pull_image(&features.reference),
        b.pull_image(&features.reference)
    )?;
    assert_eq!(ia, ib);
    for ctd in [&env.containerd, &second] {
        let dirs = ctd
            .native()
            .await?
            .overlay_layer_dirs(&features.reference)
            .await?;
        assert!(dirs.iter().all(|d| d.starts_with(ctd.overlayfs_root())));
    }
    Ok(())
}

/// A test that fails with pods still running must not leave processes or mounts behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_drop_cleans_up_running_pods() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let env = Env::start(Snapshotter::Overlayfs).await?;
    let cri = env.containerd.cri().await?;
    let pod = cri.run_pod_sandbox("left-behind").await?;
    let _ = pod;
    let state = env.containerd.state();
    let pids: Vec<i32> = std::fs::read_dir(state.join("io.containerd.runtime.v2.task/k8s.io"))?
        .flatten()
        .filter_map(|d| std::fs::read_to_string(d.path().join("init.pid")).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), 1, "one sandbox task");
    let dir = state.parent().context("state parent")?.to_owned();
    drop(env);
    for pid in pids {
        // A killed child of a killed shim may linger as a zombie, or still be in
        // uninterruptible teardown (D) for a moment: poll until it is gone or dead.
        let mut poll = chunksnap_e2e::util::Poller::new(
            format!("pause {pid} to exit"),
            std::time::Duration::from_secs(10),
        );
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
            if matches!(state, None | Some('Z') | Some('X')) {
                break;
            }
            poll.tick().await?;
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(
        !mounts.contains(dir.to_str().context("utf8")?),
        "mounts left under {dir:?}"
    );
    assert!(!dir.exists(), "{dir:?} not removed");
    Ok(())
}
