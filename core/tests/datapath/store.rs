use std::fs;
use std::time::{Duration, SystemTime};

use chunksnap_core::store::{ChunkStore, StoreError, TEMP_PREFIX};
use chunksnap_format::digest::Digest;
use chunksnap_format::pack::compress_chunk;
use chunksnap_format::pb::Compression;

fn put(store: &ChunkStore, data: &[u8]) -> (Digest, u64) {
    let d = Digest::of(data);
    let s = compress_chunk(data, 3).unwrap();
    store
        .insert_verified(&d, data.len() as u32, s.compression, &s.data)
        .unwrap();
    (d, s.data.len() as u64 + 1)
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for shard in fs::read_dir(dir.join("chunks")).unwrap() {
        for f in fs::read_dir(shard.unwrap().path()).unwrap() {
            out.push(f.unwrap().file_name().into_string().unwrap());
        }
    }
    out.sort();
    out
}

#[test]
fn store_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<ChunkStore>();
}

#[test]
fn insert_get_round_trip_raw_and_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), None).unwrap();
    let compressible = vec![7u8; 100_000];
    let random: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (d1, b1) = put(&store, &compressible);
    let raw = compress_chunk(&random, 3).unwrap();
    let (d2, b2) = put(&store, &random);
    assert!(b1 < 1000, "stored compressed, got {b1} bytes");
    assert!(store.contains(&d1) && store.contains(&d2));
    assert_eq!(store.get(&d1, 100_000).unwrap(), compressible);
    assert_eq!(store.get(&d2, 5000).unwrap(), random);
    let path = store.chunk_path(&d1);
    assert!(path.ends_with(format!("chunks/{}/{}", &d1.hex()[..2], d1.hex())));
    assert_eq!(fs::read(&path).unwrap()[0], 1, "zstd header byte");
    assert_eq!(
        fs::read(store.chunk_path(&d2)).unwrap()[0],
        raw.compression as u8
    );
    let st = store.stats();
    assert_eq!((st.chunks, st.bytes), (2, b1 + b2));
    // No temp files left behind.
    assert!(
        files_in(dir.path())
            .iter()
            .all(|n| !n.starts_with(TEMP_PREFIX))
    );
    // Reopen: the index is rebuilt from disk.
    drop(store);
    let store = ChunkStore::open(dir.path(), None).unwrap();
    assert_eq!(store.stats().chunks, 2);
    assert_eq!(store.get(&d2, 5000).unwrap(), random);
}

#[test]
fn missing_and_corrupt_chunks_are_reported_missing() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), None).unwrap();
    let absent = Digest::of(b"absent");
    assert!(matches!(store.get(&absent, 6), Err(StoreError::Missing(d)) if d == absent));

    let data = vec![3u8; 10_000];
    let (d, _) = put(&store, &data);
    let path = store.chunk_path(&d);
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(store.get(&d, 10_000), Err(StoreError::Missing(_))));
    assert!(!path.exists(), "corrupt chunk deleted");
    assert!(!store.contains(&d));
    assert_eq!(store.stats().chunks, 0);

    // A wrong declared size (an index that lies about the chunk) is an error, not a bigger
    // allocation, and never deletes the chunk another layer relies on.
    let (d, _) = put(&store, &data);
    assert!(matches!(store.get(&d, 9_999), Err(StoreError::Corrupt(_))));
    let random = crate::noise(9, 5000);
    let (r, _) = put(&store, &random);
    assert!(matches!(store.get(&r, 5001), Err(StoreError::Corrupt(_))));
    assert!(store.contains(&d) && store.contains(&r));
    assert_eq!(store.get(&d, 10_000).unwrap(), data);
    assert_eq!(store.get(&r, 5000).unwrap(), random);
}

#[test]
fn unhashed_reads_leave_damage_to_the_caller_and_hashed_reads_remove_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), None).unwrap();
    // Incompressible, so stored raw: a flipped byte still reads back at the right size.
    let data = crate::noise(3, 8192);
    let (d, _) = put(&store, &data);
    let path = store.chunk_path(&d);
    let mut bytes = fs::read(&path).unwrap();
    bytes[4000] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let read = store.get_unhashed(&d, 8192).unwrap();
    assert_eq!(read.len(), 8192);
    assert_ne!(read, data, "the damage is the reader's proof to catch");
    assert!(store.contains(&d));
    assert!(matches!(store.get(&d, 8192), Err(StoreError::Missing(_))));
    assert!(!path.exists(), "a hashed read deletes the damaged chunk");

    // A frame that no longer decodes is deleted by an unhashed read too.
    let text = vec![b'a'; 10_000];
    let (t, stored) = put(&store, &text);
    let path = store.chunk_path(&t);
    fs::write(&path, &fs::read(&path).unwrap()[..stored as usize / 2]).unwrap();
    assert!(matches!(
        store.get_unhashed(&t, 10_000),
        Err(StoreError::Missing(_))
    ));
    assert!(!store.contains(&t) && !path.exists());
}

#[test]
fn lru_eviction_respects_budget_recency_and_pins() {
    let dir = tempfile::tempdir().unwrap();
    // Incompressible 4 KiB chunks: 4097 bytes each on disk.
    let chunk = |i: u32| -> Vec<u8> { crate::noise(u64::from(i), 4096) };
    let store = ChunkStore::open(dir.path(), Some(3 * 4097)).unwrap();
    let (a, _) = put(&store, &chunk(1));
    let (b, _) = put(&store, &chunk(2));
    let (c, _) = put(&store, &chunk(3));
    assert_eq!(store.stats().chunks, 3);
    store.get(&a, 4096).unwrap(); // a is now more recent than b
    let (d, _) = put(&store, &chunk(4));
    assert!(!store.contains(&b), "least recently used evicted");
    assert!(store.contains(&a) && store.contains(&c) && store.contains(&d));
    assert!(!store.chunk_path(&b).exists());

    // Pinned chunks survive even when they are the oldest.
    let guard = store.pin([c, a]);
    let (e, _) = put(&store, &chunk(5));
    assert!(store.contains(&c) && store.contains(&a));
    assert!(!store.contains(&d), "oldest unpinned chunk evicted");
    assert!(store.stats().bytes <= 3 * 4097);
    assert_eq!(store.stats().pinned, 2);
    drop(guard);
    assert_eq!(store.stats().pinned, 0);
    let (_f, _) = put(&store, &chunk(6));
    assert!(!store.contains(&c), "unpinned again, evictable");
    assert!(store.contains(&e));
}

#[test]
fn lru_order_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), None).unwrap();
    let (old, size) = put(&store, &vec![1u8; 3000]);
    let (new, _) = put(&store, &vec![2u8; 3000]);
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(store.chunk_path(&old))
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    drop(store);
    let store = ChunkStore::open(dir.path(), Some(size)).unwrap();
    assert_eq!(store.evict_to_budget().unwrap().0, 1);
    assert!(!store.contains(&old) && store.contains(&new));
}

#[test]
fn fsck_and_gc_remove_corrupt_chunks_and_stale_temps() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), None).unwrap();
    let (good, _) = put(&store, &vec![5u8; 20_000]);
    let (bad, _) = put(&store, &vec![6u8; 20_000]);
    let bad_path = store.chunk_path(&bad);
    let mut bytes = fs::read(&bad_path).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    fs::write(&bad_path, bytes).unwrap();
    let shard = bad_path.parent().unwrap();
    let stale = shard.join(format!("{TEMP_PREFIX}stale"));
    let fresh = shard.join(format!("{TEMP_PREFIX}fresh"));
    fs::write(&stale, b"partial").unwrap();
    fs::write(&fresh, b"partial").unwrap();
    fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(600))
        .unwrap();

    let report = store.fsck(false).unwrap();
    assert_eq!((report.ok, report.corrupt, report.temp_files), (1, 1, 1));
    assert!(
        bad_path.exists() && stale.exists(),
        "no repair without repair"
    );

    let report = store.fsck(true).unwrap();
    assert_eq!((report.ok, report.corrupt, report.temp_files), (1, 1, 1));
    assert!(!bad_path.exists() && !stale.exists());
    assert!(fresh.exists(), "a temp file a writer may still own is kept");
    assert!(!store.contains(&bad) && store.contains(&good));
    assert_eq!(store.fsck(false).unwrap().corrupt, 0);

    fs::write(&stale, b"partial").unwrap();
    fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(600))
        .unwrap();
    assert_eq!(store.gc().unwrap().temp_files, 1);
    assert!(!stale.exists());
}

#[test]
fn concurrent_inserts_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(ChunkStore::open(dir.path(), None).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50u32 {
                    let data = vec![(i % 10) as u8; 1000 + (i % 10) as usize];
                    let d = Digest::of(&data);
                    let s = compress_chunk(&data, 3).unwrap();
                    store
                        .insert_verified(&d, data.len() as u32, s.compression, &s.data)
                        .unwrap();
                    assert_eq!(
                        store.get(&d, data.len() as u32).unwrap(),
                        data,
                        "thread {t}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.stats().chunks, 10);
    assert_eq!(store.fsck(false).unwrap().corrupt, 0);
    let _ = Compression::None;
}
