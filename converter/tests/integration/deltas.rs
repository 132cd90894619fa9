//! Deltas against distribution 2.8: a v2 whose edits touch every chunk (so chunk dedup saves
//! nothing) gets delta frames against v1; a node holding v1's chunks rebuilds v2 byte for byte
//! from them while fetching a small fraction of the bytes; a cold node never touches them; and
//! the result is reproducible.

use chunkconv::convert::{ConvertOptions, ConvertReport, convert};
use chunkconv::delta::DeltaOptions;
use chunkconv::extract::{ExtractOptions, run as extract};
use chunkconv::progress::Progress;
use chunksnap_core::registry::{Reference, RegistryClient};

use crate::common::{self, File, Registry};

/// v1: a 1 MiB "binary" and some small files; v2: the binary with a byte changed every 8 KiB
/// (as in a rebuild that moved code) and a file edited, so no chunk of the layer survives.
fn files(version: u8) -> [(&'static str, Vec<u8>); 3] {
    let mut bin = common::noise(11, 1 << 20);
    let mut conf = b"name=app\nversion=1\nmode=fast\n".repeat(200);
    if version == 2 {
        for i in (0..bin.len()).step_by(8 << 10) {
            bin[i] = bin[i].wrapping_add(1);
        }
        conf[17] = b'2';
    }
    [
        ("app/bin/server", bin),
        ("app/etc/app.conf", conf),
        ("app/README", b"readme\n".to_vec()),
    ]
}

fn layers(version: u8) -> Vec<Vec<u8>> {
    let files = files(version);
    let entries: Vec<File<'_>> = files
        .iter()
        .map(|(p, data)| File(p, 0o644, data.clone()))
        .collect();
    vec![common::layer(&entries)]
}

async fn convert_with(client: &RegistryClient, image: &Reference, deltas: bool) -> ConvertReport {
    let opts = ConvertOptions {
        deltas: DeltaOptions {
            enabled: deltas,
            ..DeltaOptions::default()
        },
        ..ConvertOptions::default()
    };
    convert(client, image, &opts, &Progress::hidden())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holding_v1_fetches_deltas_and_rebuilds_v2_exactly() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let reg = Registry::start();
    let client = reg.client();
    let (v1, v2) = (reg.reference("d/app", "v1"), reg.reference("d/app", "v2"));
    common::push_image(&client, &v1, &layers(1)).await;
    common::push_image(&client, &v2, &layers(2)).await;
    let first = convert_with(&client, &v1, true).await;
    assert_eq!(first.totals.delta_chunks, 0, "nothing to delta against");
    let second = convert_with(&client, &v2, true).await;
    let l = &second.manifests[0].layers[0];
    let v1_layer = &first.manifests[0].layers[0];
    assert_eq!(
        l.deltas.reference.as_deref(),
        Some(v1_layer.digest.as_str())
    );
    assert!(l.new_chunks >= l.chunks - 1, "every chunk changed: {l:?}");
    // Of the changed files only app.conf is small: its digest is no use to a node holding v1.
    assert_eq!(l.deltas.digests_dropped, 1, "{:?}", l.deltas);
    assert_eq!(l.deltas.deltas, l.deltas.tried, "{:?}", l.deltas);
    assert!(
        l.deltas.deltas + 1 >= l.new_chunks && l.deltas.delta_bytes * 20 < l.deltas.chunk_bytes,
        "deltas must stand for the new chunks at a fraction of their size: {:?}",
        l.deltas
    );

    // The index itself comes as a delta of v1's (here every chunk digest changed, so it saves
    // less than on a real update), and the artifact says so.
    assert!(
        l.deltas.index_delta_bytes > 0 && l.deltas.index_delta_bytes < l.deltas.index_bytes,
        "{:?}",
        l.deltas
    );
    let manifest = second.manifests[0].manifest.parse().unwrap();
    let (_, art) = client.find_artifact(&v2, &manifest).await.unwrap().unwrap();
    let delta = &art.index_deltas[&l.digest.parse().unwrap()];
    assert_eq!(delta.base_layer.to_string(), v1_layer.digest);
    assert_eq!(delta.size, l.deltas.index_delta_bytes);

    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let opts = ExtractOptions::default();
    let got1 = extract(&client, &v1, &tmp.path().join("v1"), Some(&store), &opts)
        .await
        .unwrap();
    assert_eq!(got1.layers[0].delta_chunks, 0);
    let got2 = extract(&client, &v2, &tmp.path().join("v2"), Some(&store), &opts)
        .await
        .unwrap();
    let x = &got2.layers[0];
    assert_eq!(x.delta_chunks, x.fetched_chunks, "{x:?}");
    assert!(
        x.fetched_bytes * 10 < got1.layers[0].fetched_bytes,
        "v2 after v1 fetched {} bytes, v1 {}",
        x.fetched_bytes,
        got1.layers[0].fetched_bytes
    );
    for (path, want) in files(2) {
        let got = std::fs::read(tmp.path().join("v2").join(path)).unwrap();
        assert!(got == want, "{path} differs from v2's");
    }

    // A cold node ignores the deltas and reads exactly the chunks.
    let cold = tempfile::tempdir().unwrap();
    let got = extract(&client, &v2, &cold.path().join("v2"), None, &opts)
        .await
        .unwrap();
    assert_eq!(got.layers[0].delta_chunks, 0);
    assert_eq!(got.layers[0].fetched_chunks, got.layers[0].chunks);

    // Reproducible: the same pair in a fresh repository gives the same index, deltas included.
    let (w1, w2) = (reg.reference("d/copy", "v1"), reg.reference("d/copy", "v2"));
    common::push_image(&client, &w1, &layers(1)).await;
    common::push_image(&client, &w2, &layers(2)).await;
    convert_with(&client, &w1, true).await;
    let again = convert_with(&client, &w2, true).await;
    assert_eq!(again.manifests[0].layers[0].index, l.index);

    // --no-deltas gives the index without them.
    let (n1, n2) = (
        reg.reference("d/plain", "v1"),
        reg.reference("d/plain", "v2"),
    );
    common::push_image(&client, &n1, &layers(1)).await;
    common::push_image(&client, &n2, &layers(2)).await;
    convert_with(&client, &n1, false).await;
    let plain = convert_with(&client, &n2, false).await;
    let p = &plain.manifests[0].layers[0];
    assert_eq!(p.deltas.deltas, 0);
    assert_ne!(p.index, l.index);
}

/// v1: a data file; v2: a new 3 MiB file first (so everything after it moved far beyond any
/// slack) and the data file renamed, with a byte changed every 8 KiB (no chunk survives): no
/// anchor maps it, only its resemblance to v1's chunks (the sketches v1's conversion stored)
/// finds its old bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_and_renamed_content_is_found_by_resemblance() {
    let reg = Registry::start();
    let client = reg.client();
    let (v1, v2) = (reg.reference("m/app", "v1"), reg.reference("m/app", "v2"));
    let data = common::noise(21, 1 << 20);
    let mut edited = data.clone();
    for i in (0..edited.len()).step_by(8 << 10) {
        edited[i] ^= 0x55;
    }
    common::push_image(
        &client,
        &v1,
        &[common::layer(&[File("srv/data-1.0.bin", 0o644, data)])],
    )
    .await;
    common::push_image(
        &client,
        &v2,
        &[common::layer(&[
            File("srv/aaa-new.bin", 0o644, common::noise(22, 3 << 20)),
            File("srv/data-2.0.bin", 0o644, edited),
        ])],
    )
    .await;
    let first = convert_with(&client, &v1, true).await;
    let m1 = &first.manifests[0];
    let (_, art1) = client
        .find_artifact(&v1, &m1.manifest.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        art1.sketches.len(),
        1,
        "every converted layer has its sketches"
    );
    let second = convert_with(&client, &v2, true).await;
    let l = &second.manifests[0].layers[0];
    // The new 3 MiB file has no old counterpart; the renamed, edited one does.
    assert!(l.deltas.deltas >= 20, "{:?}", l.deltas);
    assert!(
        l.deltas.delta_bytes * 20 < l.deltas.chunk_bytes,
        "{:?}",
        l.deltas
    );

    // Converting v2 again into a new tag reuses the layer and still lists its sketches.
    let v3 = reg.reference("m/app", "v3");
    let v2_layers = [common::layer(&[
        File("srv/aaa-new.bin", 0o644, common::noise(22, 3 << 20)),
        File("srv/data-2.0.bin", 0o644, {
            let mut e = common::noise(21, 1 << 20);
            for i in (0..e.len()).step_by(8 << 10) {
                e[i] ^= 0x55;
            }
            e
        }),
    ])];
    common::push_image(&client, &v3, &[v2_layers[0].clone(), common::layer(&[])]).await;
    let third = convert_with(&client, &v3, true).await;
    let m3 = &third.manifests[0];
    assert!(m3.layers[0].reused);
    let (_, art3) = client
        .find_artifact(&v3, &m3.manifest.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        art3.sketches.len(),
        2,
        "reused and new layers both keep sketches"
    );
}

/// v1: `app/pkg-1.0/core.so`, 2 MiB; v2: `app/pkg-1.1/core.so`, the same library relinked:
/// 512-byte pieces of v1's bytes from up to 384 KiB away, two new bytes after each. No path and
/// no chunk in common, and each new chunk's pieces are spread far wider than a chunk's
/// neighbourhood: only the old version of the file (a version-renamed path) holds them, and a
/// node decodes deltas against 1 MiB windows of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relinked_library_in_a_renamed_version_directory_comes_as_deltas_on_its_old_version() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let reg = Registry::start();
    let client = reg.client();
    let (v1, v2) = (reg.reference("r/app", "v1"), reg.reference("r/app", "v2"));
    let old = common::noise(31, 2 << 20);
    let mut rng = chunksnap_testkit::Rng::new(32);
    let mut new = Vec::with_capacity(old.len() + (old.len() >> 8));
    let (piece, reach) = (512usize, 384usize << 10);
    while new.len() < old.len() {
        let at = new.len().min(old.len() - piece);
        let lo = at.saturating_sub(reach);
        let hi = (at + reach).min(old.len() - piece);
        let from = lo + (rng.next_u64() as usize) % (hi - lo);
        new.extend_from_slice(&old[from..from + piece]);
        new.extend_from_slice(&rng.next_u64().to_le_bytes()[..2]);
    }
    let files = |v: u8, so: &[u8]| {
        vec![common::layer(&[
            File("app/README", 0o644, b"readme\n".to_vec()),
            File(
                if v == 1 {
                    "app/pkg-1.0/core.so"
                } else {
                    "app/pkg-1.1/core.so"
                },
                0o755,
                so.to_vec(),
            ),
        ])]
    };
    common::push_image(&client, &v1, &files(1, &old)).await;
    common::push_image(&client, &v2, &files(2, &new)).await;
    convert_with(&client, &v1, true).await;
    let second = convert_with(&client, &v2, true).await;
    let l = &second.manifests[0].layers[0];
    assert!(
        l.deltas.deltas + 2 >= l.new_chunks && l.deltas.delta_bytes * 10 < l.deltas.chunk_bytes,
        "the relinked library must come as small deltas: {l:?}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let opts = ExtractOptions::default();
    let got1 = extract(&client, &v1, &tmp.path().join("v1"), Some(&store), &opts)
        .await
        .unwrap();
    let got2 = extract(&client, &v2, &tmp.path().join("v2"), Some(&store), &opts)
        .await
        .unwrap();
    let x = &got2.layers[0];
    assert!(x.delta_chunks + 2 >= x.fetched_chunks, "{x:?}");
    assert!(
        x.fetched_bytes * 5 < got1.layers[0].fetched_bytes,
        "v2 after v1 fetched {} bytes, v1 {}",
        x.fetched_bytes,
        got1.layers[0].fetched_bytes
    );
    let got = std::fs::read(tmp.path().join("v2/app/pkg-1.1/core.so")).unwrap();
    assert!(got == new, "core.so differs from v2's");
}
