//! Where the benchmark's nodes keep their state (containerd's root and state, chunksnap's root)
//! and where the assembly figure extracts: a journaled ext4 filesystem (mkfs.ext4 defaults) on a
//! sparse image the bench creates, loop-mounts and removes, like a real node's `/var/lib`.
//!
//! The host root of the bench machine is ext4 without a journal. There the inode allocator
//! (`find_inode_bit` → `recently_deleted()`) skips inodes freed in the last few seconds, so every
//! extraction right after the bench deleted a tree cost 2-5x the system time and the figures swung
//! wildly (`tar -xzpf` of the debian layer: 1.0, 1.75, 3.4, 4 s in consecutive runs; a stable
//! 0.85-1.0 s on a journaled loop filesystem). Without a loop device the bench warns and falls
//! back to the host's `/tmp`; `results.json` records which was used (`node_fs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

/// Size of the sparse image: only written blocks take host disk, and [`NodeFs::trim`] between
/// runs hands freed ones back.
const IMAGE_BYTES: u64 = 24 << 30;

/// Host free space under which the bench warns (the image can grow to what the bench keeps live,
/// a few GB).
const WARN_FREE_BYTES: u64 = 8 << 30;

/// `node_fs` in `results.json` when the loop filesystem is used.
pub const LOOP_LABEL: &str = "ext4-loop (journal)";
/// `node_fs` when it could not be set up.
pub const HOST_LABEL: &str = "host /tmp";

/// The node filesystem; unmounted and its image deleted on drop.
#[derive(Debug)]
pub struct NodeFs {
    /// Mount point and image, while mounted.
    mounted: Option<(PathBuf, PathBuf)>,
}

impl NodeFs {
    /// Creates `OUT/nodefs.PID.img` (sparse), formats it and mounts it on `OUT/nodefs.PID`
    /// (`bench/run.sh` unmounts that path if the bench is killed hard). First removes what a
    /// killed bench left under `out`. Never fails: without a loop device it prints a warning and
    /// the node state stays on the host filesystem.
    pub fn setup(out: &Path) -> Self {
        clean_stale(out);
        let pid = std::process::id();
        let mnt = out.join(format!("nodefs.{pid}"));
        let img = out.join(format!("nodefs.{pid}.img"));
        match mount(&img, &mnt) {
            Ok(()) => {
                eprintln!(
                    "bench: node state on {} (journaled ext4, sparse image {})",
                    mnt.display(),
                    img.display()
                );
                Self {
                    mounted: Some((mnt, img)),
                }
            }
            Err(e) => {
                unmount(&mnt);
                let _ = std::fs::remove_file(&img);
                let _ = std::fs::remove_dir(&mnt);
                eprintln!(
                    "bench: WARNING: no journaled loop filesystem for node state ({e:#}); \
                     falling back to /tmp and {} on the host filesystem, whose figures may be \
                     slower and noisier (see docs/benchmarks.md)",
                    out.join("work").display()
                );
                Self { mounted: None }
            }
        }
    }

    /// For `results.json` and the report: [`LOOP_LABEL`] or [`HOST_LABEL`].
    pub fn label(&self) -> &'static str {
        if self.mounted.is_some() {
            LOOP_LABEL
        } else {
            HOST_LABEL
        }
    }

    /// Parent of the nodes' temp dirs.
    pub fn node_tmp(&self) -> PathBuf {
        self.mounted
            .as_ref()
            .map_or_else(|| PathBuf::from("/tmp"), |(m, _)| m.clone())
    }

    /// The assembly figure's work dir: on the loop filesystem, else `fallback`.
    pub fn work(&self, fallback: &Path) -> PathBuf {
        self.mounted
            .as_ref()
            .map_or_else(|| fallback.to_owned(), |(m, _)| m.join("work"))
    }

    /// Whether [`NodeFs::trim`] is worth calling on [`NodeFs::node_tmp`].
    pub fn is_loop(&self) -> bool {
        self.mounted.is_some()
    }
}

impl Drop for NodeFs {
    fn drop(&mut self) {
        if let Some((mnt, img)) = self.mounted.take() {
            unmount(&mnt);
            if let Err(e) = std::fs::remove_file(&img) {
                eprintln!("bench: removing {}: {e}", img.display());
            }
            let _ = std::fs::remove_dir(&mnt);
        }
    }
}

/// `fstrim` of the loop filesystem at `mnt`: blocks freed by deleted nodes go back to the host
/// (punched out of the sparse image). Untimed, between runs; failures only cost host disk.
pub fn trim(mnt: &Path) {
    let _ = Command::new("fstrim")
        .arg(mnt)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn mount(img: &Path, mnt: &Path) -> Result<()> {
    let out = img.parent().context("image without a parent")?;
    let free = nix::sys::statvfs::statvfs(out)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(u64::MAX);
    if free < WARN_FREE_BYTES {
        eprintln!(
            "bench: WARNING: only {} MB free under {}; the node filesystem's image may fill it",
            free / 1_000_000,
            out.display()
        );
    }
    std::fs::create_dir_all(mnt)?;
    std::fs::File::create(img)
        .and_then(|f| f.set_len(IMAGE_BYTES))
        .with_context(|| format!("creating sparse {}", img.display()))?;
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(img))?;
    run(Command::new("mount")
        .args(["-t", "ext4", "-o", "loop"])
        .arg(img)
        .arg(mnt))?;
    ensure!(mountpoint(mnt), "{} is not a mount point", mnt.display());
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn mountpoint(dir: &Path) -> bool {
    Command::new("mountpoint")
        .arg("-q")
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

/// Unmounts `mnt` (mounts left below it first). A process still writing there (a tool of an
/// interrupted run) keeps it busy: retried for a few seconds, then detached lazily; the loop
/// device goes away with the last user (`mount -o loop` sets autoclear).
fn unmount(mnt: &Path) {
    if !mountpoint(mnt) {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(mnt) {
        for e in entries.flatten() {
            crate::util::unmount_below(&e.path());
        }
    }
    for _ in 0..20 {
        let ok = Command::new("umount")
            .arg(mnt)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok || !mountpoint(mnt) {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("bench: {} still busy; detaching it lazily", mnt.display());
    crate::util::unmount_below(mnt);
}

/// Removes `nodefs.PID` mounts and images under `out` whose bench process is gone.
fn clean_stale(out: &Path) {
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("nodefs.") else {
            continue;
        };
        let pid = rest.strip_suffix(".img").unwrap_or(rest);
        if pid.is_empty()
            || !pid.bytes().all(|b| b.is_ascii_digit())
            || Path::new("/proc").join(pid).exists()
        {
            continue;
        }
        let path = e.path();
        eprintln!("bench: removing {} left by a killed bench", path.display());
        if rest.ends_with(".img") {
            let _ = std::fs::remove_file(&path);
        } else {
            unmount(&path);
            let _ = std::fs::remove_dir(&path);
        }
    }
}
