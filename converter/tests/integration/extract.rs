//! `extract` against distribution 2.8: a converted image assembles from its chunks, whiteouts
//! apply across layers, and a second extract with the same store fetches nothing.

use chunkconv::convert::{ConvertOptions, convert};
use chunkconv::extract::{ExtractOptions, run};
use chunkconv::progress::Progress;

use crate::common::{self, File, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extract_assembles_layers_and_reuses_the_store() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let reg = Registry::start();
    let client = reg.client();
    let image = reg.reference("ext/app", "v1");
    let big = common::noise(5, 1 << 20);
    let layers = vec![
        common::layer(&[
            File("usr/lib/big.so", 0o755, big.clone()),
            File("etc/gone", 0o644, b"bye\n".to_vec()),
            File("etc/keep", 0o600, b"keep\n".to_vec()),
            File("app/zeros", 0o644, vec![0u8; 256 << 10]),
        ]),
        common::layer(&[
            File("etc/.wh.gone", 0o644, Vec::new()),
            File("etc/keep", 0o644, b"changed\n".to_vec()),
        ]),
    ];
    common::push_image(&client, &image, &layers).await;
    convert(
        &client,
        &image,
        &ConvertOptions::default(),
        &Progress::hidden(),
    )
    .await
    .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let (dest, store) = (tmp.path().join("rootfs"), tmp.path().join("store"));
    let opts = ExtractOptions::default();
    let first = run(&client, &image, &dest, Some(&store), &opts)
        .await
        .unwrap();
    assert_eq!(first.layers.len(), 2);
    assert!(
        first
            .layers
            .iter()
            .all(|l| l.fetched_chunks + l.reused_chunks == l.chunks)
    );
    assert!(first.layers[0].fetched_chunks > 0 && first.layers[0].requests > 0);
    assert_eq!(std::fs::read(dest.join("usr/lib/big.so")).unwrap(), big);
    assert_eq!(std::fs::read(dest.join("etc/keep")).unwrap(), b"changed\n");
    assert!(!dest.join("etc/gone").exists(), "whiteout applied");
    assert!(!dest.join("etc/.wh.gone").exists());
    assert_eq!(
        std::fs::read(dest.join("app/zeros")).unwrap(),
        vec![0u8; 256 << 10]
    );
    assert!(
        first.layers[0].hole_bytes >= 200 << 10,
        "{:?}",
        first.layers[0]
    );

    let dest2 = tmp.path().join("rootfs2");
    let second = run(&client, &image, &dest2, Some(&store), &opts)
        .await
        .unwrap();
    for l in &second.layers {
        assert_eq!((l.fetched_chunks, l.requests), (0, 0), "{l:?}");
        assert_eq!(l.reused_chunks, l.chunks);
    }
    assert_eq!(std::fs::read(dest2.join("usr/lib/big.so")).unwrap(), big);

    // Without a store directory a temporary one is used and removed.
    let dest3 = tmp.path().join("rootfs3");
    let third = run(&client, &image, &dest3, None, &opts).await.unwrap();
    assert!(third.layers[0].fetched_chunks > 0);
    assert_eq!(std::fs::read(dest3.join("etc/keep")).unwrap(), b"changed\n");
}

/// `extract --tar`: every layer's original uncompressed tar, bit for bit, from the chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extract_tar_rebuilds_every_layer_bit_for_bit() {
    use std::io::Read;
    let reg = Registry::start();
    let client = reg.client();
    let image = reg.reference("ext/tar", "v1");
    let layers = vec![
        common::layer(&[
            File("usr/lib/big.so", 0o755, common::noise(6, 1 << 20)),
            File(
                &format!("deep/{}", "n".repeat(200)),
                0o644,
                b"long name\n".to_vec(),
            ),
            File("app/zeros", 0o644, vec![0u8; 256 << 10]),
        ]),
        common::layer(&[
            File("etc/.wh.gone", 0o644, Vec::new()),
            File("etc/keep", 0o644, b"changed\n".to_vec()),
        ]),
    ];
    common::push_image(&client, &image, &layers).await;
    convert(
        &client,
        &image,
        &ConvertOptions::default(),
        &Progress::hidden(),
    )
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("tars");
    let opts = ExtractOptions {
        tar: true,
        ..ExtractOptions::default()
    };
    let summary = run(&client, &image, &dest, None, &opts).await.unwrap();
    assert_eq!(summary.layers.len(), 2);
    for (i, blob) in layers.iter().enumerate() {
        let mut want = Vec::new();
        flate2::read::GzDecoder::new(&blob[..])
            .read_to_end(&mut want)
            .unwrap();
        let name = format!(
            "{i:02}-{}.tar",
            chunksnap_format::digest::Digest::of(&want).hex()
        );
        let got = std::fs::read(dest.join(&name)).unwrap();
        assert!(got == want, "layer {i} differs from the source tar");
    }
}
