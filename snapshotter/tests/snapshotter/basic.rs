//! Lifecycle, error codes, mounts, usage, cleanup and restart.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use chunksnap_proto::snapshots::{Info, Kind, UpdateSnapshotRequest};
use tonic::Code;

use crate::harness::{Daemon, Mounted, bind_source, labels_map};

fn kind(i: &Info) -> Kind {
    Kind::try_from(i.kind).unwrap()
}

#[tokio::test]
async fn layered_chain_mounts_show_layered_content() {
    if chunksnap_testkit::skip_unless_root("overlayfs mounts") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path()).await;

    // Layer 1: a lone active snapshot is a writable bind mount of its fs.
    let m = d.prepare("l1-active", "").await.unwrap();
    assert_eq!(m[0].options, ["rw", "rbind"]);
    let fs1 = bind_source(&m);
    fs::write(fs1.join("a"), "from-1").unwrap();
    fs::write(fs1.join("gone"), "deleted-in-2").unwrap();
    fs::create_dir(fs1.join("dir")).unwrap();
    fs::write(fs1.join("dir/x"), "x1").unwrap();
    d.commit("l1", "l1-active").await.unwrap();

    // Layer 2 through a real overlay mount: add, overwrite, delete.
    let m = d.prepare("l2-active", "l1").await.unwrap();
    assert_eq!(m[0].r#type, "overlay");
    assert!(m[0].options.iter().any(|o| o.starts_with("upperdir=")));
    let mnt = tmp.path().join("mnt2");
    fs::create_dir(&mnt).unwrap();
    {
        let _g = Mounted::new(&m, &mnt);
        assert_eq!(fs::read_to_string(mnt.join("a")).unwrap(), "from-1");
        fs::write(mnt.join("b"), "from-2").unwrap();
        fs::write(mnt.join("dir/x"), "x2").unwrap();
        fs::remove_file(mnt.join("gone")).unwrap();
    }
    d.commit("l2", "l2-active").await.unwrap();

    // Layer 3 active on two parents: lowerdir lists the nearest parent first.
    let m = d.prepare("l3-active", "l2").await.unwrap();
    let lower = m[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap()
        .to_owned();
    assert_eq!(lower.split(':').count(), 2);
    let s1 = d.stat("l1").await.unwrap();
    assert_eq!(kind(&s1), Kind::Committed);

    // A view of the chain: read-only overlay with lowerdir only.
    let v = d.view("v2", "l2").await.unwrap();
    assert_eq!(v[0].r#type, "overlay");
    assert!(v[0].options.iter().all(|o| !o.starts_with("upperdir=")));
    let mntv = tmp.path().join("mntv");
    fs::create_dir(&mntv).unwrap();
    {
        let _g = Mounted::new(&v, &mntv);
        assert_eq!(fs::read_to_string(mntv.join("a")).unwrap(), "from-1");
        assert_eq!(fs::read_to_string(mntv.join("b")).unwrap(), "from-2");
        assert_eq!(fs::read_to_string(mntv.join("dir/x")).unwrap(), "x2");
        assert!(!mntv.join("gone").exists());
        assert!(
            fs::write(mntv.join("new"), "x").is_err(),
            "view must be read-only"
        );
    }
    // A view of a single layer is a read-only bind mount of that layer.
    let v1 = d.view("v1", "l1").await.unwrap();
    assert_eq!(v1[0].options, ["ro", "rbind"]);
    assert_eq!(bind_source(&v1), fs1);

    // Stat reports kinds and parents; Mounts repeats Prepare's answer.
    assert_eq!(kind(&d.stat("l3-active").await.unwrap()), Kind::Active);
    assert_eq!(d.stat("l3-active").await.unwrap().parent, "l2");
    assert_eq!(kind(&d.stat("v2").await.unwrap()), Kind::View);
    assert_eq!(d.mounts("l3-active").await.unwrap(), m);
    d.stop().await;
}

#[tokio::test]
async fn error_codes_match_containerd() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path()).await;
    assert_eq!(d.stat("nope").await.unwrap_err(), Code::NotFound);
    assert_eq!(d.mounts("nope").await.unwrap_err(), Code::NotFound);
    assert_eq!(d.usage("nope").await.unwrap_err(), Code::NotFound);
    assert_eq!(d.remove("nope").await.unwrap_err(), Code::NotFound);
    assert_eq!(d.commit("x", "nope").await.unwrap_err(), Code::NotFound);
    assert_eq!(d.prepare("k", "nope").await.unwrap_err(), Code::NotFound);

    d.prepare("a", "").await.unwrap();
    assert_eq!(d.prepare("a", "").await.unwrap_err(), Code::AlreadyExists);
    assert_eq!(d.view("a", "").await.unwrap_err(), Code::AlreadyExists);
    // Parents must be committed.
    assert_eq!(d.view("v", "a").await.unwrap_err(), Code::InvalidArgument);
    assert_eq!(
        d.prepare("b", "a").await.unwrap_err(),
        Code::InvalidArgument
    );

    d.commit("a-c", "a").await.unwrap();
    assert_eq!(d.stat("a").await.unwrap_err(), Code::NotFound);
    assert_eq!(d.mounts("a-c").await.unwrap_err(), Code::FailedPrecondition);
    d.prepare("c", "a-c").await.unwrap();
    d.view("v", "a-c").await.unwrap();
    // Commit: only active, and not onto an existing name.
    assert_eq!(d.commit("a-c", "c").await.unwrap_err(), Code::AlreadyExists);
    assert_eq!(
        d.commit("v-c", "v").await.unwrap_err(),
        Code::FailedPrecondition
    );
    assert_eq!(
        d.commit("x", "a-c").await.unwrap_err(),
        Code::FailedPrecondition
    );
    // Remove with children fails; after the children go, the parent goes too.
    assert_eq!(d.remove("a-c").await.unwrap_err(), Code::FailedPrecondition);
    d.remove("c").await.unwrap();
    d.remove("v").await.unwrap();
    d.remove("a-c").await.unwrap();
    assert!(d.dirs().is_empty(), "{:?}", d.dirs());
    // Failed removals (NotFound, FailedPrecondition) count too, and every one has finished.
    assert_eq!(d.metrics.removals_in_progress.get(), 0);
    d.stop().await;
}

#[tokio::test]
async fn update_labels_like_containerd() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path()).await;
    d.prepare_labels("a", "", &[("keep", "1"), ("drop", "2")])
        .await
        .unwrap();
    let before = d.stat("a").await.unwrap();
    let update = |labels: &[(&str, &str)], paths: &[&str]| UpdateSnapshotRequest {
        snapshotter: "chunksnap".into(),
        info: Some(Info {
            name: "a".into(),
            labels: labels_map(labels),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    };
    // labels.<k>: set one, delete one that is absent from the request.
    let r = d
        .client
        .update(update(&[("new", "3")], &["labels.new", "labels.drop"]))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(r.labels, labels_map(&[("keep", "1"), ("new", "3")]));
    assert!(r.updated_at.unwrap().seconds >= before.updated_at.unwrap().seconds);
    // "labels" replaces all.
    let r = d
        .client
        .update(update(&[("only", "x")], &["labels"]))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(r.labels, labels_map(&[("only", "x")]));
    assert_eq!(d.stat("a").await.unwrap().labels, r.labels);
    // Other fields cannot be updated.
    let e = d.client.update(update(&[], &["parent"])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut missing = update(&[], &["labels"]);
    missing.info.as_mut().unwrap().name = "nope".into();
    assert_eq!(
        d.client.update(missing).await.unwrap_err().code(),
        Code::NotFound
    );
    d.stop().await;
}

#[tokio::test]
async fn usage_active_measured_committed_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path()).await;
    let fs_dir = bind_source(&d.prepare("a", "").await.unwrap());
    let (size0, inodes0) = d.usage("a").await.unwrap();
    assert_eq!(inodes0, 1, "only the fs root");
    for n in 0..3 {
        fs::write(fs_dir.join(format!("f{n}")), vec![7u8; 64 * 1024]).unwrap();
    }
    let (size, inodes) = d.usage("a").await.unwrap();
    assert_eq!(inodes, 4);
    assert!(size >= size0 + 3 * 64 * 1024, "{size}");
    d.commit("a-c", "a").await.unwrap();
    assert_eq!(d.usage("a-c").await.unwrap(), (size, inodes));
    d.stop().await;
}

#[tokio::test]
async fn cleanup_removes_orphans_and_crash_leftovers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path()).await;
    d.prepare("a", "").await.unwrap();
    d.commit("a-c", "a").await.unwrap();
    d.prepare("b", "a-c").await.unwrap();
    let kept = d.dirs();
    assert_eq!(kept.len(), 2);
    // What a crash can leave: a temp dir never renamed, a removed dir never deleted, and a
    // directory whose record was rolled back.
    let snaps = d.root.join("snapshots");
    for leftover in ["new-123-0-0/fs", "rm-77/fs", "999/work"] {
        fs::create_dir_all(snaps.join(leftover)).unwrap();
    }
    fs::write(snaps.join("rm-77/fs/file"), "x").unwrap();
    d.cleanup().await.unwrap();
    assert_eq!(d.dirs(), kept);
    assert_eq!(kind(&d.stat("b").await.unwrap()), Kind::Active);
    d.stop().await;
}

#[tokio::test]
async fn restart_keeps_state_and_never_reuses_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path()).await;
    let fs_a = bind_source(&d.prepare("a", "").await.unwrap());
    fs::write(fs_a.join("f"), "persisted").unwrap();
    d.commit_labels("a-c", "a", &[("l", "v")]).await.unwrap();
    d.prepare("gone", "").await.unwrap();
    d.remove("gone").await.unwrap();
    let dirs_before = d.dirs();
    d.stop().await;

    let mut d = Daemon::start(tmp.path()).await;
    let info = d.stat("a-c").await.unwrap();
    assert_eq!(kind(&info), Kind::Committed);
    assert_eq!(info.labels, labels_map(&[("l", "v")]));
    assert_eq!(d.dirs(), dirs_before);
    let v = d.view("v", "a-c").await.unwrap();
    assert_eq!(
        fs::read_to_string(bind_source(&v).join("f")).unwrap(),
        "persisted"
    );
    // Ids are monotonic across restarts: the new view did not take a removed id.
    let ids: Vec<u64> = d.dirs().iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(ids, [1, 3]);
    d.stop().await;
}

#[tokio::test]
async fn socket_is_private_and_stale_socket_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path()).await;
    let sock = d.sock.clone();
    let md = fs::symlink_metadata(&sock).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o777, 0o660);
    let dir_mode = fs::metadata(sock.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    d.stop().await;
    // The socket file stays behind after shutdown (as after a crash); a new start replaces it.
    let mut d = Daemon::start(tmp.path()).await;
    assert_eq!(d.list(&[]).await.unwrap().0, Vec::<String>::new());
    d.stop().await;
}

#[tokio::test]
async fn metrics_endpoint_serves_metrics_and_health() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let metrics = chunksnap::metrics::Metrics::new();
    metrics.chunks_fetched.inc();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(chunksnap::metrics::serve_http(
        listener,
        metrics,
        shutdown.clone(),
    ));
    let get = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let health = get("/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let body = get("/metrics").await;
    assert!(body.contains("chunksnap_chunks_fetched_total 1"), "{body}");
    assert!(body.contains("chunksnap_prepare_seconds_bucket"));
    assert!(body.contains("chunksnap_removals_in_progress 0"), "{body}");
    assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn crash_between_rename_and_commit_is_harmless() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path()).await;
    d.prepare("a", "").await.unwrap();
    // As if the next Prepare renamed its directory into place and died before committing:
    // id 2 was never recorded, so the next Prepare gets id 2 again.
    let stale = d.root.join("snapshots/2/fs");
    fs::create_dir_all(&stale).unwrap();
    fs::write(stale.join("junk"), "x").unwrap();
    let m = d.prepare("b", "").await.unwrap();
    assert_eq!(bind_source(&m), stale);
    assert_eq!(
        fs::read_dir(&stale).unwrap().count(),
        0,
        "stale content replaced"
    );
    // Leftovers found at startup are removed before serving.
    fs::create_dir_all(d.root.join("snapshots/new-1-2-3/fs")).unwrap();
    fs::create_dir_all(d.root.join("snapshots/rm-9")).unwrap();
    d.stop().await;
    let d = Daemon::start(tmp.path()).await;
    assert_eq!(d.dirs(), ["1", "2"]);
    d.stop().await;
}
