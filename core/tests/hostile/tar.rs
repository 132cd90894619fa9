//! Hostile layer tars through the whole node path: tar → `scan_tar` → index (`validate`) →
//! `assemble_layer`. Names are written into raw headers, since `tar::Builder` refuses `..`.

use chunksnap_core::assemble::{AssembleError, WhiteoutMode, assemble_layer};
use chunksnap_core::tarscan::{TarError, TarScan, scan_tar};
use chunksnap_format::FormatError;
use chunksnap_format::index::{decode, encode, validate};
use chunksnap_format::pb::EntryType;

use crate::harness::{BuiltLayer, build_layer};
use crate::{MemReader, Sandbox};

/// Appends an entry with a raw name (and link name), bypassing the builder's path checks.
fn raw(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &[u8], link: &[u8], data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_mtime(1_600_000_000);
    h.set_size(data.len() as u64);
    if kind == tar::EntryType::GNUSparse {
        // A sparse header with an empty map (the real size must parse).
        h.as_gnu_mut().unwrap().realsize = *b"00000000000\0";
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

type Item<'a> = (tar::EntryType, &'a [u8], &'a [u8], &'a [u8]);

fn tar_of(items: &[Item<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (kind, name, link, data) in items {
        raw(&mut b, *kind, name, link, data);
    }
    b.into_inner().unwrap()
}

fn scan(tar: &[u8]) -> Result<(TarScan, Vec<u8>), TarError> {
    let mut content = Vec::new();
    scan_tar(tar, &mut content).map(|s| (s, content))
}

/// tar → index, validated and round-tripped through the blob form, as a node receives it.
fn convert(tar: &[u8]) -> Result<BuiltLayer, FormatError> {
    let (s, content) = scan(tar).unwrap();
    let mut built = build_layer(&s.entries, &content);
    validate(&built.index)?;
    built.index = decode(&encode(&built.index))?;
    Ok(built)
}

const REG: tar::EntryType = tar::EntryType::Regular;

#[test]
fn dotdot_and_absolute_names_stay_inside() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    let sb = Sandbox::new();
    let abs = format!("{}/passwd", sb.sentinel_str());
    let tar = tar_of(&[
        (REG, b"../../../evil", b"", b"a"),
        (REG, b"x/../../y/../../z", b"", b"b"),
        (REG, abs.as_bytes(), b"", b"c"),
        (REG, b"/etc/hostname", b"", b"d"),
        (REG, b"./././ok", b"", b"e"),
    ]);
    let built = convert(&tar).unwrap();
    let paths: Vec<&[u8]> = built.index.entries.iter().map(|e| &e.path[..]).collect();
    let abs_rel = abs.trim_start_matches('/').as_bytes();
    assert_eq!(paths, [&b"evil"[..], b"z", abs_rel, b"etc/hostname", b"ok"]);
    for mode in [WhiteoutMode::Overlay, WhiteoutMode::Apply] {
        let sb = Sandbox::new();
        assemble_layer(&built.index, &MemReader::of(&built), &sb.dest, mode).unwrap();
        assert_eq!(std::fs::read(sb.dest.join("evil")).unwrap(), b"a");
        assert_eq!(std::fs::read(sb.dest.join(&abs[1..])).unwrap(), b"c");
        sb.assert_untouched();
    }
    sb.assert_untouched();
}

#[test]
fn a_symlink_out_then_a_file_through_it_is_refused_or_contained() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    // `a -> <sentinel>` then `a/passwd` (the `a -> /etc`, `a/passwd` attack, aimed at a
    // sentinel rather than the host's /etc).
    for target in ["abs", "../sentinel", "../../../../../../../.."] {
        let sb = Sandbox::new();
        let target = if target == "abs" {
            sb.sentinel_str()
        } else {
            target.to_owned()
        };
        for (name, converts) in [(&b"a/passwd"[..], false), (b"a/b/passwd", true)] {
            let tar = tar_of(&[
                (tar::EntryType::Symlink, b"a", target.as_bytes(), b""),
                (REG, name, b"", b"pwned"),
            ]);
            // The scanner accepts the tar; validation refuses a symlink as an entry's direct
            // parent, but not an implied directory beneath one (`a/b`): the assembler is the
            // guard that always holds.
            let r = convert(&tar).map(drop);
            if converts {
                r.unwrap();
            } else {
                assert!(
                    matches!(r, Err(FormatError::ParentNotDirectory { .. })),
                    "{r:?}"
                );
            }
            let (s, content) = scan(&tar).unwrap();
            let built = build_layer(&s.entries, &content);
            let r = assemble_layer(
                &built.index,
                &MemReader::of(&built),
                &sb.dest,
                WhiteoutMode::Overlay,
            );
            assert!(
                matches!(r, Err(AssembleError::Escape { .. })),
                "{target}: {r:?}"
            );
            sb.assert_untouched();
            // Apply mode (chunkconv extract) follows it, but only inside the destination.
            let sb2 = Sandbox::new();
            let _ = assemble_layer(
                &built.index,
                &MemReader::of(&built),
                &sb2.dest,
                WhiteoutMode::Apply,
            );
            sb2.assert_untouched();
        }
    }
}

#[test]
fn hardlinks_out_or_to_nothing_are_refused() {
    let sb = Sandbox::new();
    let abs = format!("{}/passwd", sb.sentinel_str());
    let cases: Vec<Vec<u8>> = vec![
        b"../../../sentinel/passwd".to_vec(),
        abs.into_bytes(),
        b"missing".to_vec(),
        b"later".to_vec(),
        b"a/passwd".to_vec(), // through the symlink below
    ];
    for target in cases {
        let tar = tar_of(&[
            (
                tar::EntryType::Symlink,
                b"a",
                sb.sentinel_str().as_bytes(),
                b"",
            ),
            (tar::EntryType::Link, b"h", &target, b""),
            (REG, b"later", b"", b"x"),
        ]);
        assert!(
            matches!(convert(&tar), Err(FormatError::BadHardlink { .. })),
            "{target:?}"
        );
        // A node given such an index anyway (no validation) still refuses to link.
        let (s, content) = scan(&tar).unwrap();
        let built = build_layer(&s.entries, &content);
        for mode in [WhiteoutMode::Overlay, WhiteoutMode::Apply] {
            let sb2 = Sandbox::new();
            let r = assemble_layer(&built.index, &MemReader::of(&built), &sb2.dest, mode);
            assert!(r.is_err(), "{target:?} {mode:?}");
            sb2.assert_untouched();
        }
    }
    // An empty or root link target is refused by the scanner itself.
    for target in [&b""[..], b"/", b"./.."] {
        let tar = tar_of(&[(tar::EntryType::Link, b"h", target, b"")]);
        assert!(
            matches!(scan(&tar), Err(TarError::UnsafePath { .. })),
            "{target:?}"
        );
    }
    sb.assert_untouched();
}

#[test]
fn unsupported_entry_types_are_clear_errors() {
    for (kind, what) in [
        (tar::EntryType::GNUSparse, "GNUSparse"),
        (tar::EntryType::new(b'V'), "volume label"),
        (tar::EntryType::new(b'M'), "multi-volume"),
        (tar::EntryType::new(b'Z'), "unknown"),
    ] {
        let tar = tar_of(&[(REG, b"ok", b"", b"x"), (kind, b"odd", b"", b"")]);
        match scan(&tar) {
            Err(TarError::Unsupported { path, .. }) => assert_eq!(path, "odd", "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    // PAX-format sparse files.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("GNU.sparse.major", &b"1"[..]), ("GNU.sparse.minor", b"0")])
        .unwrap();
    raw(&mut b, REG, b"sparse", b"", b"map");
    let tar = b.into_inner().unwrap();
    assert!(matches!(scan(&tar), Err(TarError::Unsupported { .. })));
    // A NUL inside a PAX path.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("path", &b"a\0b"[..])]).unwrap();
    raw(&mut b, REG, b"x", b"", b"");
    let tar = b.into_inner().unwrap();
    assert!(scan(&tar).is_err());
}

#[test]
fn truncated_and_garbage_tars_are_errors() {
    let data = crate::scale::noise(3, 10_000);
    let tar = tar_of(&[
        (tar::EntryType::Directory, b"d/", b"", b""),
        (REG, b"d/f", b"", &data),
    ]);
    // Cut inside the file's data, and inside its header.
    for cut in [512 * 2 + 5000, 512 + 100] {
        let r = scan(&tar[..cut]);
        assert!(r.is_err(), "cut at {cut}: {r:?}");
    }
    // Garbage: bad header checksum.
    let garbage = crate::scale::noise(9, 4096);
    assert!(matches!(scan(&garbage), Err(TarError::Read(_))));
    // A header claiming far more data than follows (no allocation of the claimed size).
    let mut h = tar::Header::new_old();
    h.set_path("big").unwrap();
    h.set_size(1 << 40);
    h.set_entry_type(REG);
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend_from_slice(&[1u8; 1024]);
    assert!(scan(&tar).is_err());
    // A bad mode field.
    let mut tar = tar_of(&[(REG, b"f", b"", b"x")]);
    tar[100..108].copy_from_slice(b"zzzzzzz\0");
    let mut h = tar::Header::new_old();
    h.as_mut_bytes().copy_from_slice(&tar[..512]);
    h.set_cksum();
    tar[..512].copy_from_slice(h.as_bytes());
    assert!(matches!(scan(&tar), Err(TarError::BadField { .. })));
    // All zeros is an empty archive.
    let (s, _) = scan(&[0u8; 1024]).unwrap();
    assert!(s.entries.is_empty());
}

#[test]
fn replacing_a_directory_with_a_symlink_in_the_tar_is_resolved_before_assembly() {
    if chunksnap_testkit::skip_unless_root("file ownership (chown)") {
        return;
    }
    // Extraction semantics: `d/` then `d -> <sentinel>` then `d/passwd`; the index keeps one
    // entry per path, and assembly of `d/passwd` must not go through the link.
    let sb = Sandbox::new();
    let tar = tar_of(&[
        (tar::EntryType::Directory, b"d/", b"", b""),
        (REG, b"d/x", b"", b"x"),
        (
            tar::EntryType::Symlink,
            b"d",
            sb.sentinel_str().as_bytes(),
            b"",
        ),
        (REG, b"d/passwd", b"", b"pwned"),
    ]);
    let (s, content) = scan(&tar).unwrap();
    let built = build_layer(&s.entries, &content);
    assert!(matches!(
        validate(&built.index),
        Err(FormatError::ParentNotDirectory { .. })
    ));
    let kinds: Vec<(Vec<u8>, i32)> = built
        .index
        .entries
        .iter()
        .map(|e| (e.path.clone(), e.r#type))
        .collect();
    assert_eq!(
        kinds,
        [
            (b"d".to_vec(), EntryType::Symlink as i32),
            (b"d/passwd".to_vec(), EntryType::File as i32)
        ]
    );
    let r = assemble_layer(
        &built.index,
        &MemReader::of(&built),
        &sb.dest,
        WhiteoutMode::Overlay,
    );
    assert!(matches!(r, Err(AssembleError::Escape { .. })), "{r:?}");
    sb.assert_untouched();
}
