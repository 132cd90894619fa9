//! A hardlink in an update whose target the node could seed from an older layer. A tar
//! hardlink applies its own owner, mode, xattrs and mtime to its target's inode (containerd
//! does so), and a seeded file shares its inode with the older snapshot: linking the target
//! from v1 would rewrite v1's committed file. The node must write hardlink targets itself,
//! keep seeding the other identical files, leave v1's snapshot exactly as it was, and match
//! containerd's own unpacking of both images.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use chunksnap_e2e::{BuiltImage, ImageSpec};
use chunksnap_testkit::noise;

use super::common::{FaultyNode, convert, oracle, oracle_differences};

const MTIME: u64 = 1_700_000_000;

/// One tar entry: a regular file, or a hardlink to `link` with its own attributes.
struct Spec<'a> {
    path: &'a str,
    data: &'a [u8],
    mode: u32,
    owner: u64,
    mtime: u64,
    xattr: &'a [u8],
    link: Option<&'a str>,
}

fn file<'a>(path: &'a str, data: &'a [u8]) -> Spec<'a> {
    Spec {
        path,
        data,
        mode: 0o644,
        owner: 0,
        mtime: MTIME,
        xattr: b"v1",
        link: None,
    }
}

fn layer(entries: &[Spec]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_mode(0o755);
    dir.set_mtime(MTIME);
    dir.set_size(0);
    dir.set_entry_type(tar::EntryType::Directory);
    b.append_data(&mut dir, "data/", std::io::empty())?;
    for e in entries {
        b.append_pax_extensions([("SCHILY.xattr.user.origin", e.xattr)])?;
        let mut h = tar::Header::new_ustar();
        h.set_mode(e.mode);
        h.set_uid(e.owner);
        h.set_gid(e.owner);
        h.set_mtime(e.mtime);
        match e.link {
            Some(target) => {
                h.set_size(0);
                h.set_entry_type(tar::EntryType::Link);
                b.append_link(&mut h, e.path, target)?;
            }
            None => {
                h.set_size(e.data.len() as u64);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, e.path, e.data)?;
            }
        }
    }
    Ok(b.into_inner()?)
}

/// What could change about a committed file: content, owner, mode, mtime, xattrs and inode.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    sha256: String,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    ino: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn observe(path: &Path) -> Result<Observed> {
    let m = std::fs::symlink_metadata(path).with_context(|| format!("{}", path.display()))?;
    let mut xattrs = BTreeMap::new();
    for name in xattr::list(path)? {
        let value = xattr::get(path, &name)?.unwrap_or_default();
        xattrs.insert(name.to_string_lossy().into_owned(), value);
    }
    Ok(Observed {
        sha256: chunksnap_format::digest::Digest::of(&std::fs::read(path)?).to_string(),
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ino: m.ino(),
        xattrs,
    })
}

async fn single_layer_dir(node: &FaultyNode, image: &BuiltImage) -> Result<std::path::PathBuf> {
    let dirs = node
        .env
        .containerd
        .native()
        .await?
        .layer_dirs("chunksnap", &image.reference)
        .await?;
    dirs.into_iter().next().context("one layer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hardlink_to_a_seedable_file_leaves_the_older_snapshot_untouched() -> Result<()> {
    if chunksnap_e2e::skip_unless_root() {
        return Ok(());
    }
    let node = FaultyNode::start("").await?;
    let oracle = oracle(&node.env).await?;
    let cri = node.env.containerd.cri().await?;
    let (same, keep, new) = (
        noise(9101, 200 << 10),
        noise(9102, 150 << 10),
        noise(9103, 90 << 10),
    );
    let v1 = layer(&[file("data/same.bin", &same), file("data/keep.bin", &keep)])?;
    let v2 = layer(&[
        file("data/same.bin", &same),
        file("data/keep.bin", &keep),
        file("data/new.bin", &new),
        Spec {
            path: "data/link.bin",
            data: &[],
            mode: 0o600,
            owner: 1000,
            mtime: MTIME + 3600,
            xattr: b"link",
            link: Some("data/same.bin"),
        },
    ])?;
    let images = &node.env.images;
    let v1 = images
        .push_tars("rel-seedlink", "v1", vec![v1], ImageSpec::default())
        .await?;
    let v2 = images
        .push_tars("rel-seedlink", "v2", vec![v2], ImageSpec::default())
        .await?;
    convert(&v1.reference).await?;
    convert(&v2.reference).await?;

    cri.pull_image(&v1.reference).await?;
    let v1_dir = single_layer_dir(&node, &v1).await?;
    let before = [
        observe(&v1_dir.join("data/same.bin"))?,
        observe(&v1_dir.join("data/keep.bin"))?,
    ];
    cri.pull_image(&v2.reference).await?;
    ensure!(
        node.prepares("remote").await? == 2.0,
        "both layers should be assembled remotely"
    );
    let after = [
        observe(&v1_dir.join("data/same.bin"))?,
        observe(&v1_dir.join("data/keep.bin"))?,
    ];
    ensure!(
        before == after,
        "v1's committed files changed:\nbefore {before:#?}\nafter {after:#?}"
    );
    let v2_dir = single_layer_dir(&node, &v2).await?;
    ensure!(
        observe(&v2_dir.join("data/keep.bin"))?.ino == after[1].ino,
        "the identical file without a hardlink should still be seeded from v1"
    );
    let linked = observe(&v2_dir.join("data/same.bin"))?;
    ensure!(
        linked.ino != after[0].ino && linked.mode & 0o7777 == 0o600 && linked.uid == 1000,
        "the hardlink target must be v2's own inode with the link's attributes: {linked:?}"
    );
    for image in [&v1, &v2] {
        ensure!(
            oracle_differences(&node.env.containerd, &oracle, image).await? == 0,
            "{} differs from containerd's unpacking",
            image.reference
        );
    }
    Ok(())
}
