//! Indexes and tars that are huge or deep: bounded time and memory, no stack overflow, and a
//! clean result (assembled, or a typed error).
//!
//! Sizes: validation, encoding and decoding run on 1,000,000 entries; assembly runs on 100,000
//! empty files (1M would take minutes of syscalls in a unit test). Nesting is 10,000 levels for a
//! single path (the kernel refuses paths past PATH_MAX, so the assembler must fail cleanly), a
//! 100,000-level path through the tar scanner, and 3,000 levels of directory entries through
//! tar → index → assemble; a 1,500-level tree is then removed by a whiteout (run under
//! `ulimit -n 1024` this used to fail with EMFILE: one descriptor per level).

use std::time::{Duration, Instant};

use chunksnap_core::assemble::{AssembleError, WhiteoutMode, assemble_layer};
use chunksnap_core::tarscan::scan_tar;
use chunksnap_format::index::{decode, encode, validate};
use chunksnap_format::pb::{EntryType, LayerIndex};

use crate::harness::build_layer;
use crate::{Layer, MemReader, Sandbox, entry};

/// Generous bounds: debug builds on a shared 2-core machine.
const SLOW: Duration = Duration::from_secs(120);

pub use chunksnap_testkit::noise;

fn many_files(n: usize) -> LayerIndex {
    let mut l = Layer::default();
    for d in 0..n.div_ceil(1000) {
        l.dir(&format!("d{d}"));
    }
    for i in 0..n {
        l.file(&format!("d{}/f{i}", i / 1000), b"");
    }
    build_layer(&l.entries, &l.content).index
}

#[test]
fn a_million_entries_validate_encode_and_decode_in_bounded_time() {
    let index = many_files(1_000_000);
    assert_eq!(index.entries.len(), 1_001_000);
    let started = Instant::now();
    validate(&index).unwrap();
    let blob = encode(&index);
    let back = decode(&blob).unwrap();
    assert_eq!(back.entries.len(), index.entries.len());
    assert!(started.elapsed() < SLOW, "took {:?}", started.elapsed());
    // A duplicate at the very end is still found.
    let mut dup = index;
    let first = dup.entries[5].clone();
    dup.entries.push(first);
    assert!(validate(&dup).is_err());
}

#[test]
fn a_hundred_thousand_files_assemble() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let index = many_files(100_000);
    let sb = Sandbox::new();
    let started = Instant::now();
    let stats = assemble_layer(
        &index,
        &MemReader(Default::default()),
        &sb.dest,
        WhiteoutMode::Overlay,
    )
    .unwrap();
    assert_eq!(stats.files, 100_000);
    assert!(started.elapsed() < SLOW, "took {:?}", started.elapsed());
    sb.assert_untouched();
}

#[test]
fn ten_thousand_levels_in_one_path_fail_cleanly() {
    let mut path = "d/".repeat(10_000);
    path.push('f');
    let mut l = Layer::default();
    l.file(&path, b"deep");
    let built = l.build();
    validate(&built.index).unwrap();
    let back = decode(&encode(&built.index)).unwrap();
    for mode in [WhiteoutMode::Overlay, WhiteoutMode::Apply] {
        let sb = Sandbox::new();
        let r = assemble_layer(&back, &MemReader::of(&built), &sb.dest, mode);
        // Past PATH_MAX the kernel says ENAMETOOLONG; either way, no crash.
        assert!(
            matches!(
                r,
                Err(AssembleError::Sys {
                    errno: nix::errno::Errno::ENAMETOOLONG,
                    ..
                })
            ) || r.is_ok(),
            "{mode:?}: {r:?}"
        );
        sb.assert_untouched();
    }
    // The same through a tar (GNU long name), and a 100,000-level one: the scanner's work and
    // memory stay linear in the path length.
    assert_linear("a path of n levels through the tar scanner", 50_000, |n| {
        let huge = format!("{}f", "d/".repeat(n));
        let tar = deep_tar(&[huge.as_str()], b"deep");
        let started = Instant::now();
        let scan = scan_tar(tar.as_slice(), &mut Vec::new()).unwrap();
        assert_eq!(scan.entries[0].path.len(), huge.len());
        (started.elapsed(), tar.len())
    });
    let tar = deep_tar(&[path.as_str()], b"deep");
    let mut content = Vec::new();
    let scan = scan_tar(tar.as_slice(), &mut content).unwrap();
    assert_eq!(scan.entries.len(), 1);
    assert_eq!(scan.entries[0].path, path.as_bytes());
}

#[test]
fn thousands_of_nested_directories_through_tar_and_assembly() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    const DEPTH: usize = 3_000;
    let mut dirs = Vec::with_capacity(DEPTH);
    let mut p = String::new();
    for _ in 0..DEPTH {
        if !p.is_empty() {
            p.push('/');
        }
        p.push_str("dd");
        dirs.push(format!("{p}/"));
    }
    let refs: Vec<&str> = dirs.iter().map(String::as_str).collect();
    let tar = deep_tar(&refs, b"");
    let mut content = Vec::new();
    let started = Instant::now();
    let scan = scan_tar(tar.as_slice(), &mut content).unwrap();
    assert_eq!(scan.entries.len(), DEPTH);
    // Was over two minutes when the scanner kept every ancestor prefix of every path. (Not a
    // linearity check: the input grows with n² here, and the scan grows faster still, about
    // 6x for 3x the bytes; see docs/security.md's known limits.)
    assert!(
        started.elapsed() < SLOW,
        "scan took {:?}",
        started.elapsed()
    );
    let built = build_layer(&scan.entries, &content);
    validate(&built.index).unwrap();
    for mode in [WhiteoutMode::Overlay, WhiteoutMode::Apply] {
        let sb = Sandbox::new();
        let started = Instant::now();
        let r = assemble_layer(&built.index, &MemReader::of(&built), &sb.dest, mode);
        assert!(
            matches!(
                r,
                Err(AssembleError::Sys {
                    errno: nix::errno::Errno::ENAMETOOLONG,
                    ..
                })
            ),
            "{mode:?}: {r:?}"
        );
        assert!(started.elapsed() < SLOW);
        sb.assert_untouched();
    }

    // Below PATH_MAX it assembles, and a whiteout of the top removes the whole tree (Apply
    // mode's removal must not run out of stack or file descriptors on a deep tree).
    let mut l = Layer::default();
    let mut p = String::new();
    for _ in 0..1_500 {
        if !p.is_empty() {
            p.push('/');
        }
        p.push('d');
        l.dir(&p);
    }
    l.file(&format!("{p}/f"), b"bottom");
    let built = l.build();
    let sb = Sandbox::new();
    let reader = MemReader::of(&built);
    assemble_layer(&built.index, &reader, &sb.dest, WhiteoutMode::Apply).unwrap();
    let mut upper = Layer::default();
    upper.entries.push(entry(b".wh.d", EntryType::File));
    let upper = upper.build();
    assemble_layer(&upper.index, &reader, &sb.dest, WhiteoutMode::Apply).unwrap();
    assert!(!sb.dest.join("d").exists());
    sb.assert_untouched();
}

/// A tar of directories (names ending in `/`) and, for other names, files holding `data`.
/// Asserts that `run` costs time linear in the size of its input: `run(n)` returns the time
/// taken and the input bytes, and doubling `n` may cost at most 1.5 × the growth of the input.
/// A complexity check rather than a wall-clock bound, so a loaded machine slows both sides
/// alike; each size takes the fastest of three runs.
fn assert_linear(what: &str, n: usize, run: impl Fn(usize) -> (Duration, usize)) {
    let best = |n: usize| (0..3).map(|_| run(n)).min().unwrap_or_default();
    let ((small, small_bytes), (large, large_bytes)) = (best(n), best(2 * n));
    let growth = large_bytes as f64 / small_bytes.max(1) as f64;
    // The slack absorbs timer granularity and scheduling noise on fast runs.
    let bound = small.mul_f64(1.5 * growth) + Duration::from_millis(30);
    assert!(
        large <= bound,
        "{what}: n = {n} ({small_bytes} bytes) took {small:?}, 2n ({large_bytes} bytes) took \
         {large:?}: more than linear in the input"
    );
}

fn deep_tar(names: &[&str], data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for name in names {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o755);
        h.set_mtime(1_600_000_000);
        if name.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, name, &[][..]).unwrap();
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, data).unwrap();
        }
    }
    b.into_inner().unwrap()
}
