//! Verification of assembled layers (`core::verify`): a layer assembled from a faithful index
//! rebuilds to the source tar's sha256; any change to the directory or to what the index says
//! (content, mode, owner, mtime, xattrs, order) is caught, and so is a wrong chainID.

use std::fs;

use chunksnap_core::assemble::{
    AssembleOptions, Progress, WhiteoutMode, assemble_layer, assemble_layer_with,
};
use chunksnap_core::tarscan::split::scan_tar_split;
use chunksnap_core::verify::{AssembledContent, VerifyError, check_chain, verify_tar, write_tar};
use chunksnap_format::digest::Digest;
use chunksnap_format::pb::{EntryType, LayerIndex};

use super::{Built, LayerBuilder, MemReader, noise, xattr};

/// A layer with every entry kind the verifier reads back, a replaced file (its first content
/// is not in the directory) and junk after the end-of-archive blocks.
fn source_tar() -> Vec<u8> {
    let mut b = LayerBuilder::default();
    b.dir("etc", 0o755);
    b.file("etc/passwd", 0o644, b"root:x:0:0\n");
    b.file("etc/replaced", 0o600, &noise(1, 70_000));
    b.file("bin/tool", 0o755, &noise(2, 300_000)).xattrs = vec![xattr("user.k", b"v")];
    b.file("empty", 0o644, b"");
    b.symlink("etc/link", "passwd");
    b.hardlink("etc/hard", "etc/passwd", 0o644);
    b.file("etc/replaced", 0o640, b"new content");
    let mut tar = b.tar();
    tar.extend_from_slice(&[0; 4096]);
    tar
}

/// The converter's view of `tar`: index (with tar-split) and chunks.
fn convert(tar: &[u8]) -> Built {
    let mut content = Vec::new();
    let (scan, split) = scan_tar_split(tar, &mut content).unwrap();
    let mut built = LayerBuilder {
        entries: scan.entries,
        content,
    }
    .build(16 << 10, 1 << 20);
    built.index.version = 2;
    built.index.tar_split = split;
    built
}

fn assemble(index: &LayerIndex, built: &Built, dir: &std::path::Path) {
    fs::create_dir_all(dir).unwrap();
    assemble_layer(
        index,
        &MemReader(built.chunks.clone()),
        dir,
        WhiteoutMode::Overlay,
    )
    .unwrap();
}

fn verify(index: &LayerIndex, built: &Built, dir: &std::path::Path) -> Result<Digest, VerifyError> {
    let chunks = MemReader(built.chunks.clone());
    let source = AssembledContent::new(index, dir, &chunks, None).unwrap();
    verify_tar(index, source)
}

#[test]
fn a_faithful_layer_verifies_and_rebuilds_bit_for_bit() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let tar = source_tar();
    let built = convert(&tar);
    let mut out = Vec::new();
    let d = write_tar(&built.index, &MemReader(built.chunks.clone()), &mut out).unwrap();
    assert_eq!(out, tar);
    assert_eq!(d, Digest::of(&tar));

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fs");
    assemble(&built.index, &built, &dir);
    let diff_id = verify(&built.index, &built, &dir).unwrap();
    assert_eq!(diff_id, Digest::of(&tar));
    let parent = Digest::of(b"parent").to_string();
    let target = Digest::of(format!("{parent} {diff_id}").as_bytes()).to_string();
    check_chain(&parent, &target, &diff_id).unwrap();
    assert!(check_chain(&parent, &diff_id.to_string(), &diff_id).is_err());
    assert!(check_chain("", &target, &diff_id).is_err());
}

#[test]
fn a_changed_directory_fails() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let tar = source_tar();
    let built = convert(&tar);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fs");
    assemble(&built.index, &built, &dir);
    // Same size, other bytes: the stream, and so the diffID, is another.
    fs::write(dir.join("etc/passwd"), b"evil:x:0:0\n").unwrap();
    let changed = verify(&built.index, &built, &dir).unwrap();
    assert_ne!(changed, Digest::of(&tar));
    assert!(check_chain("", &Digest::of(&tar).to_string(), &changed).is_err());
    // A file replaced by a symlink is not read through.
    fs::remove_file(dir.join("etc/passwd")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("etc/passwd")).unwrap();
    assert!(matches!(
        verify(&built.index, &built, &dir),
        Err(VerifyError::Read(_))
    ));
    // Nor is a directory replaced by a symlink to a copy of it.
    fs::remove_file(dir.join("etc/passwd")).unwrap();
    fs::write(dir.join("etc/passwd"), b"root:x:0:0\n").unwrap();
    fs::rename(dir.join("bin"), tmp.path().join("bin-copy")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("bin-copy"), dir.join("bin")).unwrap();
    assert!(matches!(
        verify(&built.index, &built, &dir),
        Err(VerifyError::Read(_))
    ));
}

#[test]
fn an_index_that_is_not_the_tars_fails() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let tar = source_tar();
    let built = convert(&tar);
    fn tool(ix: &mut LayerIndex) -> &mut chunksnap_format::pb::Entry {
        ix.entries
            .iter_mut()
            .find(|e| e.path == b"bin/tool")
            .unwrap()
    }
    type Forge = Box<dyn Fn(&mut LayerIndex)>;
    let forgeries: Vec<(&str, Forge)> = vec![
        ("mode", Box::new(|ix| tool(ix).mode = 0o4755)),
        ("owner", Box::new(|ix| tool(ix).uid = 1000)),
        ("mtime", Box::new(|ix| tool(ix).mtime_sec += 1)),
        (
            "xattr",
            Box::new(|ix| tool(ix).xattrs[0].value = b"w".to_vec()),
        ),
        ("reordered", Box::new(|ix| ix.entries.swap(0, 1))),
        (
            "type",
            Box::new(|ix| {
                let e = ix
                    .entries
                    .iter_mut()
                    .find(|e| e.path == b"etc/link")
                    .unwrap();
                e.r#type = EntryType::Fifo as i32;
                e.link_target.clear();
            }),
        ),
        (
            "dropped",
            Box::new(|ix| {
                ix.entries.pop();
            }),
        ),
    ];
    for (name, forge) in forgeries {
        let mut ix = built.index.clone();
        forge(&mut ix);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fs");
        assemble(&ix, &built, &dir);
        let r = verify(&ix, &built, &dir);
        assert!(r.is_err(), "{name}: forged index verified");
    }
}

#[test]
fn another_layers_index_under_this_layers_name_fails_the_chain() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let tar = source_tar();
    let mut other = LayerBuilder::default();
    other.file("etc/passwd", 0o644, b"evil:x:0:0\n");
    let other_tar = other.tar();
    let built = convert(&other_tar);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fs");
    assemble(&built.index, &built, &dir);
    // Self-consistent, so it verifies as *its* layer, which is not the one asked for.
    let diff_id = verify(&built.index, &built, &dir).unwrap();
    assert_eq!(diff_id, Digest::of(&other_tar));
    let want = Digest::of(&tar).to_string();
    assert!(matches!(
        check_chain("", &want, &diff_id),
        Err(VerifyError::ChainMismatch { .. })
    ));
}

#[test]
fn format_1_indexes_cannot_be_verified() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let built = convert(&source_tar());
    let mut ix = built.index.clone();
    ix.tar_split = None;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fs");
    assemble(&ix, &built, &dir);
    assert!(matches!(
        verify(&ix, &built, &dir),
        Err(VerifyError::NoTarSplit)
    ));
    let mut sink = Vec::new();
    assert!(write_tar(&ix, &MemReader(built.chunks.clone()), &mut sink).is_err());
}

/// A layer whose files the walk streams itself (larger than what it hands to workers), with
/// holes in the middle and at the end, next to small files the workers write.
fn large_files_tar() -> Vec<u8> {
    let mut b = LayerBuilder::default();
    let mut sparse = noise(3, 5 << 20);
    sparse[1 << 20..3 << 20].fill(0);
    sparse[(4 << 20) + 5..].fill(0);
    b.file("big/sparse.img", 0o644, &sparse);
    for i in 0..40 {
        b.file(&format!("small/{i}"), 0o644, &noise(10 + i, 3000));
    }
    b.file("big/dense", 0o755, &noise(4, 3 << 20));
    b.file("big/zeros", 0o644, &vec![0; 2 << 20]);
    b.tar()
}

/// Assembles `index` into `dir` while another thread verifies it as the snapshotter does.
fn assemble_and_verify(
    index: &LayerIndex,
    built: &Built,
    dir: &std::path::Path,
    cancel: &std::sync::atomic::AtomicBool,
) -> (
    Result<chunksnap_core::assemble::AssembleStats, chunksnap_core::assemble::AssembleError>,
    Result<Digest, VerifyError>,
) {
    fs::create_dir_all(dir).unwrap();
    let chunks = MemReader(built.chunks.clone());
    let progress = Progress::new(index.entries.len());
    let opts = AssembleOptions {
        mode: WhiteoutMode::Overlay,
        parents: &[],
        seeding: None,
        cancel: Some(cancel),
        progress: Some(&progress),
    };
    std::thread::scope(|s| {
        let checker = s.spawn(|| {
            let source = AssembledContent::new(index, dir, &chunks, Some(cancel))
                .unwrap()
                .while_assembled(&progress);
            verify_tar(index, source)
        });
        let assembled = assemble_layer_with(index, &chunks, dir, &opts);
        progress.finish(assembled.is_ok());
        (assembled, checker.join().unwrap())
    })
}

#[test]
fn verifying_alongside_the_assembly_hashes_the_same_stream() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    for tar in [source_tar(), large_files_tar()] {
        let built = convert(&tar);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fs");
        let never = std::sync::atomic::AtomicBool::new(false);
        let (assembled, verified) = assemble_and_verify(&built.index, &built, &dir, &never);
        assembled.unwrap();
        assert_eq!(verified.unwrap(), Digest::of(&tar));
        // And the directory left behind is the same one a verification after it reads.
        assert_eq!(
            verify(&built.index, &built, &dir).unwrap(),
            Digest::of(&tar)
        );
    }
}

#[test]
fn a_failed_assembly_stops_the_verification() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let tar = large_files_tar();
    let built = convert(&tar);
    // Chunks missing from the reader: the assembly fails part way.
    let mut partial = Built {
        index: built.index.clone(),
        packs: built.packs.clone(),
        chunks: built.chunks.clone(),
    };
    let last = Digest::from_slice(&built.index.chunks.last().unwrap().digest).unwrap();
    partial.chunks.remove(&last);
    let tmp = tempfile::tempdir().unwrap();
    let never = std::sync::atomic::AtomicBool::new(false);
    let (assembled, verified) =
        assemble_and_verify(&built.index, &partial, &tmp.path().join("fs"), &never);
    assert!(assembled.is_err());
    assert!(verified.is_err());
    // Cancelled at once: both stop, neither hangs.
    let tmp = tempfile::tempdir().unwrap();
    let cancel = std::sync::atomic::AtomicBool::new(true);
    let (assembled, verified) =
        assemble_and_verify(&built.index, &built, &tmp.path().join("fs"), &cancel);
    assert!(assembled.is_err());
    assert!(
        matches!(verified, Err(VerifyError::Cancelled)),
        "{verified:?}"
    );
}

#[test]
fn content_digests_are_hints_the_diff_id_proves_the_content() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let tar = source_tar();
    let built = convert(&tar);
    let mut ix = built.index.clone();
    let tool = ix
        .entries
        .iter_mut()
        .find(|e| e.path == b"bin/tool")
        .unwrap();
    tool.content_digest = Digest::of(b"something else").as_bytes().to_vec();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fs");
    assemble(&ix, &built, &dir);
    // Nothing the container sees differs, so the layer is the image's own.
    assert_eq!(verify(&ix, &built, &dir).unwrap(), Digest::of(&tar));
}
