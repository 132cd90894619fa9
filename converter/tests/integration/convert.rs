//! `convert` against distribution 2.8: re-conversion pushes nothing, results are reproducible,
//! and a new version sharing most content pushes only the new chunks.

use chunkconv::convert::{ConvertOptions, ConvertReport, convert};
use chunkconv::inspect::inspect;
use chunkconv::progress::Progress;
use chunksnap_core::registry::{Reference, RegistryClient};

use crate::common::{self, File, Registry};

fn v1_layers() -> Vec<Vec<u8>> {
    vec![
        common::layer(&[
            File("usr/lib/libbig.so", 0o755, common::noise(1, 2 << 20)),
            File("etc/os-release", 0o644, b"ID=test\n".to_vec()),
        ]),
        common::layer(&[File("app/data.bin", 0o644, common::noise(2, 1 << 20))]),
    ]
}

fn v2_layers() -> Vec<Vec<u8>> {
    let mut data = common::noise(2, 1 << 20);
    // A small edit in the middle of the app's data, plus a new small file.
    data[500_000..500_100].copy_from_slice(&[7u8; 100]);
    let mut layers = v1_layers();
    layers[1] = common::layer(&[
        File("app/data.bin", 0o644, data),
        File("app/VERSION", 0o644, b"2\n".to_vec()),
    ]);
    layers
}

async fn run(client: &RegistryClient, image: &Reference) -> ConvertReport {
    convert(
        client,
        image,
        &ConvertOptions::default(),
        &Progress::hidden(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconverting_pushes_nothing_and_is_reproducible() {
    let reg = Registry::start();
    let client = reg.client();
    let image = reg.reference("conv/app", "v1");
    let manifest = common::push_image(&client, &image, &v1_layers()).await;

    let first = run(&client, &image).await;
    assert_eq!(first.manifests.len(), 1);
    let m = &first.manifests[0];
    assert_eq!(m.manifest, manifest.to_string());
    assert!(!m.already_converted);
    assert_eq!(m.layers.len(), 2);
    for l in &m.layers {
        assert!(!l.reused);
        assert!(l.chunks > 0 && l.new_chunks > 0 && l.entries > 0, "{l:?}");
        assert!(l.bytes_pushed > 0);
    }
    assert!(m.totals.bytes_pushed > 3 << 20, "noise does not compress");

    let (art_digest, art) = client
        .find_artifact(&image, &manifest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(art_digest.to_string(), m.artifact);
    assert_eq!(art.indexes.len(), 2);
    assert!(!art.packs.is_empty());
    for l in &m.layers {
        let d = l.digest.parse().unwrap();
        assert_eq!(art.indexes[&d].digest, l.index);
    }

    let second = run(&client, &image).await;
    let m2 = &second.manifests[0];
    assert!(m2.already_converted);
    assert_eq!(m2.artifact, m.artifact);
    assert_eq!(second.totals.bytes_pushed, 0);
    assert_eq!(second.totals.bytes_read, 0);
    let idx1: Vec<_> = m.layers.iter().map(|l| &l.index).collect();
    let idx2: Vec<_> = m2.layers.iter().map(|l| &l.index).collect();
    assert_eq!(idx1, idx2);

    // The same image in a fresh repository converts to byte-identical indexes and artifact.
    let other = reg.reference("conv/copy", "v1");
    assert_eq!(
        common::push_image(&client, &other, &v1_layers()).await,
        manifest
    );
    let third = run(&client, &other).await;
    let m3 = &third.manifests[0];
    assert!(!m3.already_converted);
    assert_eq!(m3.artifact, m.artifact);
    assert_eq!(m3.layers.iter().map(|l| &l.index).collect::<Vec<_>>(), idx1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_version_pushes_only_new_chunks() {
    let reg = Registry::start();
    let client = reg.client();
    let v1 = reg.reference("share/app", "v1");
    let v2 = reg.reference("share/app", "v2");
    common::push_image(&client, &v1, &v1_layers()).await;
    let first = run(&client, &v1).await;
    common::push_image(&client, &v2, &v2_layers()).await;
    let second = run(&client, &v2).await;

    let (a, b) = (&first.manifests[0], &second.manifests[0]);
    assert!(!b.already_converted);
    // The unchanged base layer reuses v1's index without reading the layer.
    assert_eq!(b.layers[0].digest, a.layers[0].digest);
    assert!(b.layers[0].reused);
    assert_eq!(b.layers[0].index, a.layers[0].index);
    assert_eq!(b.layers[0].bytes_read, 0);
    assert_eq!(b.layers[0].bytes_pushed, 0);
    // The edited layer stores only the chunks around the edit and the new file.
    let (old, new) = (&a.layers[1], &b.layers[1]);
    assert!(!new.reused);
    assert!(new.chunks >= old.chunks);
    assert!(new.new_chunks >= 1);
    assert!(
        new.new_chunks * 4 <= new.chunks,
        "most chunks must be shared: {new:?}"
    );
    assert!(
        new.bytes_pushed * 3 < old.bytes_pushed,
        "v2 pushed {} bytes for the app layer, v1 {}",
        new.bytes_pushed,
        old.bytes_pushed
    );
    assert!(second.catalog_chunks >= first.totals.chunks / 2);

    // inspect with v1 as base sees the sharing.
    let report = inspect(&client, &v2, Some(&v1)).await.unwrap();
    let r = &report[0];
    assert_eq!(r.artifact, b.artifact);
    assert_eq!(r.layers.len(), 2);
    let shared = r.base_chunks.unwrap();
    assert!(
        shared < r.unique_chunks && shared * 10 >= r.unique_chunks * 8,
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_in_another_repository_is_copied_when_used() {
    let reg = Registry::start();
    let client = reg.client();
    let base = reg.reference("lib/base", "1");
    common::push_image(&client, &base, &v1_layers()[..1]).await;
    run(&client, &base).await;

    let app = reg.reference("other/app", "1");
    let manifest = common::push_image(&client, &app, &v2_layers()).await;
    let opts = ConvertOptions {
        bases: vec![base.clone()],
        ..Default::default()
    };
    let report = convert(&client, &app, &opts, &Progress::hidden())
        .await
        .unwrap();
    let m = &report.manifests[0];
    assert!(m.layers[0].reused, "the base layer's index is reused");
    // Every pack the artifact lists is readable from the app's own repository.
    let (_, art) = client
        .find_artifact(&app, &manifest)
        .await
        .unwrap()
        .unwrap();
    for pack in art.packs.keys() {
        assert!(
            client.blob_exists(&app, pack).await.unwrap(),
            "{pack} missing"
        );
    }
    for desc in art.indexes.values() {
        let d = desc.sha256().unwrap();
        assert!(
            client.blob_exists(&app, &d).await.unwrap(),
            "index {d} missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_converts_each_platform_manifest() {
    let reg = Registry::start();
    let client = reg.client();
    let amd = reg.reference("multi/app", "amd64");
    let arm = reg.reference("multi/app", "arm64");
    let m_amd = common::push_image(&client, &amd, &v1_layers()).await;
    let m_arm = common::push_image(&client, &arm, &v2_layers()).await;
    let size = |r: Reference| {
        let client = client.clone();
        async move { client.resolve(&r).await.unwrap().bytes.len() }
    };
    let entries = [
        (m_amd, size(amd.clone()).await, "linux/amd64"),
        (m_arm, size(arm.clone()).await, "linux/arm64"),
    ];
    let index = reg.reference("multi/app", "latest");
    common::push_index(&client, &index, &entries).await;

    let opts = ConvertOptions {
        dedup_tags: false,
        ..Default::default()
    };
    let report = convert(&client, &index, &opts, &Progress::hidden())
        .await
        .unwrap();
    assert_eq!(report.manifests.len(), 2);
    assert_eq!(report.manifests[0].platform.as_deref(), Some("linux/amd64"));
    assert_eq!(report.manifests[1].platform.as_deref(), Some("linux/arm64"));
    // The second platform shares the base layer with the first: its index is reused.
    assert!(report.manifests[1].layers[0].reused);
    for (m, d) in report.manifests.iter().zip([m_amd, m_arm]) {
        let (art, _) = client.find_artifact(&index, &d).await.unwrap().unwrap();
        assert_eq!(art.to_string(), m.artifact);
    }
}

#[test]
fn cli_convert_and_inspect_print_json() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let reg = Registry::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let image = reg.reference("cli/app", "v1");
    rt.block_on(common::push_image(&reg.client(), &image, &v1_layers()));
    let bin = env!("CARGO_BIN_EXE_chunkconv");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .env("DOCKER_CONFIG", reg.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "chunkconv {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let r = image.whole();
    let first = run(&["convert", "--plain-http", "--json", "--jobs", "1", &r]);
    assert_eq!(first["manifests"][0]["layers"].as_array().unwrap().len(), 2);
    assert!(first["totals"]["bytes_pushed"].as_u64().unwrap() > 0);
    assert!(first["seconds"].as_f64().is_some());
    let again = run(&["convert", "--plain-http", "--json", &r]);
    assert_eq!(again["totals"]["bytes_pushed"], 0);
    assert_eq!(
        again["manifests"][0]["artifact"],
        first["manifests"][0]["artifact"]
    );
    let inspected = run(&["inspect", "--plain-http", "--json", &r]);
    assert_eq!(inspected[0]["artifact"], first["manifests"][0]["artifact"]);
    assert_eq!(
        inspected[0]["layers"][0]["entries"],
        first["manifests"][0]["layers"][0]["entries"]
    );

    // extract assembles the filesystem from the chunks alone.
    let dest = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let root = dest.path().join("rootfs");
    run(&[
        "extract",
        "--plain-http",
        "--json",
        "--store",
        store.path().to_str().unwrap(),
        &r,
        root.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(root.join("usr/lib/libbig.so")).unwrap(),
        common::noise(1, 2 << 20)
    );
    assert_eq!(
        std::fs::read(root.join("app/data.bin")).unwrap(),
        common::noise(2, 1 << 20)
    );
}
