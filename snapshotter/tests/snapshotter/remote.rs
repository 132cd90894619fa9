//! Remote prepare with fake `RemoteLayers`, replaying containerd 1.6's unpack handshake.

use std::fs;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chunksnap::remote::{RemoteFuture, RemoteLayers, RemoteOutcome, RemoteRequest};
use chunksnap_proto::snapshots::Kind;
use tonic::Code;

use crate::harness::{Daemon, Mounted, bind_source};

/// Writes `<layer-digest>.txt` into the layer, or writes junk and falls back.
#[derive(Default)]
struct Fake {
    fallback: bool,
    calls: AtomicUsize,
    seen: Mutex<Vec<RemoteRequest>>,
}

impl RemoteLayers for Fake {
    fn prepare_remote(&self, req: RemoteRequest) -> RemoteFuture<'_> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let name = format!("{}.txt", req.layer_digest.replace(':', "-"));
            fs::write(req.fs_dir.join(&name), &req.layer_digest).unwrap();
            self.seen.lock().unwrap().push(req);
            if self.fallback {
                RemoteOutcome::Fallback("no artifact for this image".into())
            } else {
                RemoteOutcome::Assembled {
                    size: 4096,
                    inodes: 2,
                }
            }
        })
    }
}

fn cri_labels<'a>(target: &'a str, layer: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("containerd.io/snapshot.ref", target),
        ("containerd.io/snapshot/cri.layer-digest", layer),
        ("containerd.io/snapshot/cri.manifest-digest", "sha256:m"),
        (
            "containerd.io/snapshot/cri.image-ref",
            "127.0.0.1:5000/app:v1",
        ),
        (
            "containerd.io/snapshot/cri.image-layers",
            "sha256:l1,sha256:l2",
        ),
    ]
}

#[tokio::test]
async fn assembled_layers_follow_containerd_handshake() {
    if chunksnap_testkit::skip_unless_root("overlayfs mounts") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    let mut d = Daemon::start_with(tmp.path(), fake.clone()).await;

    // Bottom layer: Prepare -> AlreadyExists -> List(filter) -> Stat(chainID).
    let err = d
        .prepare_labels(
            "k8s.io/1/extract-1 sha256:c1",
            "",
            &cri_labels("sha256:c1", "sha256:l1"),
        )
        .await
        .unwrap_err();
    assert_eq!(err, Code::AlreadyExists);
    let (found, _) = d
        .list(&[r#"labels."containerd.io/snapshot.ref"==sha256:c1,parent=="""#])
        .await
        .unwrap();
    assert_eq!(found, ["sha256:c1"]);
    let info = d.stat("sha256:c1").await.unwrap();
    assert_eq!(Kind::try_from(info.kind).unwrap(), Kind::Committed);
    assert_eq!(info.labels["containerd.io/snapshot.ref"], "sha256:c1");
    assert_eq!(d.usage("sha256:c1").await.unwrap(), (4096, 2));
    assert_eq!(
        d.stat("k8s.io/1/extract-1 sha256:c1").await.unwrap_err(),
        Code::NotFound
    );

    // Upper layer: parent is the chainID below.
    let err = d
        .prepare_labels(
            "k8s.io/2/extract-2 sha256:c2",
            "sha256:c1",
            &cri_labels("sha256:c2", "sha256:l2"),
        )
        .await
        .unwrap_err();
    assert_eq!(err, Code::AlreadyExists);
    let (found, _) = d
        .list(&[r#"labels."containerd.io/snapshot.ref"==sha256:c2,parent=="sha256:c1""#])
        .await
        .unwrap();
    assert_eq!(found, ["sha256:c2"]);
    {
        let seen = fake.seen.lock().unwrap();
        assert_eq!(seen[1].parent, "sha256:c1");
        assert_eq!(seen[1].target, "sha256:c2");
        assert_eq!(seen[1].manifest_digest, "sha256:m");
        assert_eq!(seen[1].image_ref, "127.0.0.1:5000/app:v1");
    }

    // An already-present target answers AlreadyExists without assembling again.
    let err = d
        .prepare_labels(
            "k8s.io/3/extract-3 sha256:c1",
            "",
            &cri_labels("sha256:c1", "sha256:l1"),
        )
        .await
        .unwrap_err();
    assert_eq!(err, Code::AlreadyExists);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    let exposed = d.metrics.encode();
    assert!(
        exposed.contains(r#"chunksnap_prepares_total{outcome="remote"} 2"#),
        "{exposed}"
    );
    assert!(exposed.contains(r#"chunksnap_prepares_total{outcome="fallback"} 0"#));

    // A container on top sees both assembled layers.
    let m = d.prepare("container", "sha256:c2").await.unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    {
        let _g = Mounted::new(&m, &mnt);
        assert_eq!(
            fs::read_to_string(mnt.join("sha256-l1.txt")).unwrap(),
            "sha256:l1"
        );
        assert_eq!(
            fs::read_to_string(mnt.join("sha256-l2.txt")).unwrap(),
            "sha256:l2"
        );
    }
    d.stop().await;
}

#[tokio::test]
async fn fallback_gives_a_normal_empty_active_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake {
        fallback: true,
        ..Default::default()
    });
    let mut d = Daemon::start_with(tmp.path(), fake.clone()).await;
    let key = "k8s.io/1/extract-1 sha256:c1";
    let m = d
        .prepare_labels(key, "", &cri_labels("sha256:c1", "sha256:l1"))
        .await
        .unwrap();
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    assert_eq!(m[0].options, ["rw", "rbind"]);
    let fs_dir = bind_source(&m);
    assert_eq!(
        fs::read_dir(&fs_dir).unwrap().count(),
        0,
        "partial output removed"
    );
    assert_eq!(
        Kind::try_from(d.stat(key).await.unwrap().kind).unwrap(),
        Kind::Active
    );
    // containerd applies the layer itself and commits under the chainID.
    fs::write(fs_dir.join("applied"), "by containerd").unwrap();
    d.commit_labels(
        "sha256:c1",
        key,
        &[("containerd.io/snapshot.ref", "sha256:c1")],
    )
    .await
    .unwrap();
    assert_eq!(
        Kind::try_from(d.stat("sha256:c1").await.unwrap().kind).unwrap(),
        Kind::Committed
    );

    // Without the CRI labels the remote path is not asked at all.
    d.prepare_labels("plain", "", &[("containerd.io/snapshot.ref", "sha256:x")])
        .await
        .unwrap();
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    assert!(
        d.metrics
            .encode()
            .contains(r#"chunksnap_prepares_total{outcome="fallback"} 1"#)
    );
    d.stop().await;
}

#[tokio::test]
async fn concurrent_pulls_of_one_layer_both_see_already_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    let d = Daemon::start_with(tmp.path(), fake.clone()).await;
    let labels = cri_labels("sha256:c1", "sha256:l1");
    let mut tasks = Vec::new();
    for i in 0..4 {
        let mut client = d.client.clone();
        let labels = crate::harness::labels_map(&labels);
        tasks.push(tokio::spawn(async move {
            client
                .prepare(chunksnap_proto::snapshots::PrepareSnapshotRequest {
                    snapshotter: "chunksnap".into(),
                    key: format!("k8s.io/{i}/extract"),
                    parent: String::new(),
                    labels,
                })
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Err(Code::AlreadyExists));
    }
    let mut d = d;
    // One committed target, no leftover extraction snapshots or directories.
    assert_eq!(d.list(&[]).await.unwrap().0, ["sha256:c1"]);
    assert_eq!(d.dirs().len(), 1, "{:?}", d.dirs());
    d.stop().await;
}

/// Writes a file every few milliseconds through a directory fd (as the assembler does, so a
/// rename of the directory does not stop it) until the request's claim is cancelled.
#[derive(Default)]
struct Endless {
    writing: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
}

impl RemoteLayers for Endless {
    fn prepare_remote(&self, req: RemoteRequest) -> RemoteFuture<'_> {
        let (writing, stopped) = (self.writing.clone(), self.stopped.clone());
        Box::pin(async move {
            let dir = fs::File::open(&req.fs_dir).unwrap();
            let claim = req.claim.clone();
            tokio::task::spawn_blocking(move || {
                // Bounded, so a failing test still ends (the runtime waits for this thread).
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut i = 0;
                while !claim.is_cancelled() && Instant::now() < deadline {
                    let path = format!("/proc/self/fd/{}/f{i}", dir.as_raw_fd());
                    fs::write(path, b"x").unwrap();
                    writing.store(true, Ordering::SeqCst);
                    i += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                stopped.store(claim.is_cancelled(), Ordering::SeqCst);
            })
            .await
            .unwrap();
            RemoteOutcome::Fallback("cancelled".into())
        })
    }
}

async fn wait_for(what: &str, flag: &AtomicBool) {
    let started = Instant::now();
    while !flag.load(Ordering::SeqCst) {
        assert!(started.elapsed() < Duration::from_secs(20), "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// containerd killed mid-pull: the Prepare call is dropped while its writers run on. They
/// must stop, and containerd's collector removing the orphan must leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_prepare_stops_writing_and_its_removal_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(Endless::default());
    let mut d = Daemon::start_with(tmp.path(), fake.clone()).await;
    let mut client = d.client.clone();
    let labels = crate::harness::labels_map(&cri_labels("sha256:c1", "sha256:l1"));
    let call = tokio::spawn(async move {
        client
            .prepare(chunksnap_proto::snapshots::PrepareSnapshotRequest {
                snapshotter: "chunksnap".into(),
                key: "k8s.io/1/extract".into(),
                parent: String::new(),
                labels,
            })
            .await
    });
    wait_for("the prepare never started writing", &fake.writing).await;
    call.abort();
    wait_for("dropping the call did not cancel its writer", &fake.stopped).await;
    d.remove("k8s.io/1/extract").await.unwrap();
    assert_eq!(d.dirs(), Vec::<String>::new());
    assert!(d.list(&[]).await.unwrap().0.is_empty());
    d.stop().await;
}
