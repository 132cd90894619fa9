//! The rollout watcher end to end: `chunksnap prewarm-watch` (the real binary) against a stub
//! API server replaying a recorded rolling update (e2e/fixtures/prewarm/rolling-update.json),
//! with a `410 Gone` forcing a re-list and a dropped connection forcing a re-watch, asking
//! the real daemon, which pulls through real containerd CRI from a real registry.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chunksnap_e2e::chunksnap::bin_dir;
use chunksnap_e2e::kube_stub::{KubeStub, Resource};
use chunksnap_e2e::util::Poller;
use serde_json::Value;

use super::{PrewarmNode, app_images};

const NODE: &str = "node-a";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watcher_prewarms_v2_during_a_replayed_rolling_update() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let node = PrewarmNode::start().await?;
    let (v1, v2, plain) = app_images(&node.env.images, "prewarm-watch").await?;
    let app_layer = v2.layers.last().map_or(0, |l| l.size);
    let cri = node.env.containerd.cri().await?;
    cri.pull_image(&v1.reference).await?;

    let fixture = fixture(&[
        ("{{V1}}", &v1.reference),
        ("{{V2}}", &v2.reference),
        ("{{PLAIN}}", &plain.reference),
        ("{{NODE}}", NODE),
    ])?;
    let stub = KubeStub::default();
    for rs in fixture["replicasets"].as_array().context("replicasets")? {
        stub.apply(Resource::ReplicaSets, rs.clone());
    }
    for pod in fixture["pods"].as_array().context("pods")? {
        stub.apply(Resource::Pods, pod.clone());
    }
    let addr = stub.start().await?;
    let kubeconfig = node.dir().join("kubeconfig");
    std::fs::write(&kubeconfig, KubeStub::kubeconfig(addr))?;
    let mut watcher = Watcher::start(&node, &kubeconfig)?;

    let open = |resource| stub.counts(resource).2 > 0;
    wait("both watches open", || {
        open(Resource::ReplicaSets) && open(Resource::Pods)
    })
    .await?;
    // 410 Gone on the ReplicaSet watch: the watcher must list again.
    stub.expire_watches(Resource::ReplicaSets);
    wait("a ReplicaSet re-list and watch", || {
        let (lists, _, open) = stub.counts(Resource::ReplicaSets);
        lists >= 2 && open > 0
    })
    .await?;
    // A dropped pod watch: the watcher must watch again.
    let (_, watches, _) = stub.counts(Resource::Pods);
    stub.drop_watches(Resource::Pods);
    wait("a new pod watch", || {
        let (_, requests, open) = stub.counts(Resource::Pods);
        requests > watches && open > 0
    })
    .await?;
    ensure!(stub.events().is_empty(), "events before any rollout");

    // The rollout: batch (opted out) and app get a revision 2.
    node.env.registry.reset_counters();
    for step in fixture["rollout"].as_array().context("rollout")? {
        let resource = match step["resource"].as_str() {
            Some("pods") => Resource::Pods,
            _ => Resource::ReplicaSets,
        };
        stub.apply(resource, step["object"].clone());
    }
    let note = |e: &Value| e["note"].as_str().unwrap_or_default().to_owned();
    wait("the Prewarmed event", || {
        stub.events()
            .iter()
            .any(|e| note(e).starts_with("Prewarmed"))
    })
    .await?;
    let events = stub.events();
    eprintln!("events: {events:#?}");
    let event = events
        .iter()
        .find(|e| note(e).starts_with("Prewarmed"))
        .context("no event")?;
    ensure!(
        note(event).contains("Prewarmed prewarm-watch:v2:")
            && note(event).contains("fetched")
            && note(event).contains(NODE),
        "event note {:?}",
        note(event)
    );
    ensure!(event["regarding"]["kind"] == "Deployment" && event["regarding"]["name"] == "app");
    ensure!(event["reason"] == "Prewarmed" && event["type"] == "Normal");
    ensure!(
        events.iter().all(|e| e["regarding"]["name"] != "batch"),
        "the opted-out workload was pre-warmed"
    );

    let tags = cri.list_image_tags().await?;
    ensure!(
        tags.contains(&v2.reference),
        "CRI ListImages lacks v2: {tags:?}"
    );
    ensure!(
        !tags.contains(&plain.reference),
        "the opted-out image was pulled"
    );
    ensure!(
        node.layer_blob_gets(&v2).is_empty(),
        "v2's layer blob was downloaded: not assembled from chunks"
    );
    let staged = node.env.registry.bytes_served();
    ensure!(node.prewarms("pulled").await? == 1.0, "one pull expected");
    ensure!(
        node.prewarms("unconverted").await? == 0.0,
        "batch was asked for"
    );

    // The kubelet's pull once v2's pod lands here: nothing but the manifest travels.
    node.env.registry.reset_counters();
    cri.pull_image(&v2.reference).await?;
    let gets = node.blob_gets();
    ensure!(
        gets.is_empty(),
        "PullImage(v2) after pre-warm fetched blobs: {gets:?}"
    );

    let requests = stub.requests();
    ensure!(
        requests
            .iter()
            .filter(|r| r.starts_with("/api/v1/pods"))
            .all(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "pods were not selected by node: {requests:?}"
    );
    watcher.stop()?;
    eprintln!(
        "pre-warm on rollout: {staged} B from the registry (v2 app layer blob {} B)",
        app_layer
    );
    Ok(())
}

/// The recorded rollout with placeholders replaced.
fn fixture(replace: &[(&str, &str)]) -> Result<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/prewarm/rolling-update.json"
    );
    let mut text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    for (from, to) in replace {
        text = text.replace(from, to);
    }
    Ok(serde_json::from_str(&text)?)
}

async fn wait(what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let mut poll = Poller::new(what, Duration::from_secs(60));
    while !cond() {
        poll.tick().await?;
    }
    Ok(())
}

/// `chunksnap prewarm-watch` as a child process, stopped with SIGTERM.
struct Watcher(Option<Child>);

impl Watcher {
    fn start(node: &PrewarmNode, kubeconfig: &std::path::Path) -> Result<Self> {
        let log = std::fs::File::create(node.dir().join("prewarm-watch.log"))?;
        let child = Command::new(bin_dir()?.join("chunksnap"))
            .arg("--config")
            .arg(node.dir().join("config.toml"))
            .args([
                "--log-level",
                "info,chunksnap=debug",
                "prewarm-watch",
                "--node",
                NODE,
            ])
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting chunksnap prewarm-watch")?;
        Ok(Self(Some(child)))
    }

    /// SIGTERM, and a clean exit.
    fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.0.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let status = child.wait()?;
            ensure!(
                status.success(),
                "prewarm-watch exited with {status} on SIGTERM"
            );
        }
        Ok(())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
