//! The index entry bomb: a raw index of millions of empty entries (two bytes each on the wire,
//! a 200-byte struct each once decoded) compresses to a few KiB. Whether it arrives as an index
//! blob (registry fetch, embedded `data`, index file) or as an index delta, it must be refused
//! before prost allocates the entries. A test binary of its own: it counts allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use chunksnap_format::FormatError;
use chunksnap_format::budget::MAX_INDEX_MEMORY;
use chunksnap_format::delta::{compress_index_delta, decompress_index_delta};
use chunksnap_format::digest::Digest;
use chunksnap_format::index::{MAX_INDEX_SIZE, compress_raw_fast, decode, decode_raw};
use chunksnap_format::pb::Entry;

/// Counts the bytes live on the calling thread, and their peak.
struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn track(delta: i64) {
    // `try_with`: the allocator also runs while a thread's locals are torn down.
    let _ = LIVE.try_with(|live| {
        live.set(live.get() + delta);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as i64);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as i64));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the peak of bytes it held live on this thread.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, (PEAK.with(Cell::get) - base).max(0) as u64)
}

/// `n` empty entries: field 4, length 0.
fn bomb_raw(n: usize) -> Vec<u8> {
    [0x22u8, 0x00].repeat(n)
}

/// Enough empty entries to decode to 4 GiB (at the raw cap it would be about 25 GiB; this keeps
/// the test's own buffers small).
fn bomb_entries() -> usize {
    let entries = (4u64 << 30) / std::mem::size_of::<Entry>() as u64;
    assert!(entries * 2 <= MAX_INDEX_SIZE as u64);
    entries as usize
}

#[test]
fn index_blob_bomb_is_refused_before_decoding() {
    let raw = bomb_raw(bomb_entries());
    let blob = zstd::bulk::compress(&raw, 3).unwrap();
    assert!(blob.len() < 64 << 10, "bomb blob is {} bytes", blob.len());
    drop(raw);
    let started = Instant::now();
    let (result, peak) = peak_of(|| decode(&blob));
    let elapsed = started.elapsed();

    assert!(
        matches!(result, Err(FormatError::TooManyElements { estimate }) if estimate > MAX_INDEX_MEMORY),
        "{result:?}"
    );
    // The decompressed bytes (and read_to_end's growth) are all it held: no decoded entries.
    let raw_len = bomb_entries() as u64 * 2;
    assert!(peak <= 2 * raw_len + (4 << 20), "peak {peak} bytes");
    println!(
        "bomb: {} byte blob, {raw_len} raw bytes, refused in {elapsed:?}, peak {peak} bytes",
        blob.len()
    );
}

#[test]
fn index_delta_bomb_is_refused_before_decoding() {
    let base = bomb_raw(16);
    let raw = bomb_raw(bomb_entries());
    let digest = Digest::of(&raw);
    let frame = compress_index_delta(&base, &raw).unwrap().unwrap();
    assert!(
        frame.len() < 64 << 10,
        "bomb frame is {} bytes",
        frame.len()
    );
    drop(raw);
    let rebuilt = decompress_index_delta(&frame, &base, MAX_INDEX_SIZE as u64, &digest).unwrap();
    let (result, peak) = peak_of(|| decode_raw(&rebuilt));
    assert!(
        matches!(result, Err(FormatError::TooManyElements { .. })),
        "{result:?}"
    );
    assert!(peak < 1 << 20, "decode_raw held {peak} bytes");
    // And as a stored index file (compressed fast, decoded by `decode`).
    let stored = compress_raw_fast(&rebuilt);
    assert!(matches!(
        decode(&stored),
        Err(FormatError::TooManyElements { .. })
    ));
}
