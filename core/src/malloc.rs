//! glibc malloc settings the binaries start with, so that memory freed after a burst (range
//! bodies, index copies, compression buffers) does not stay resident.

/// For the daemon; call first in `main`, before any other thread exists.
/// - Arenas are capped at two ([`cap_arenas`]).
/// - Blocks of 1 MiB and more are mapped on their own and unmapped when freed. By default glibc
///   raises that threshold each time such a block is freed (up to 32 MiB), after which the large
///   buffers of a pull (range bodies, index copies, delta bases) stay in the heap once freed.
pub fn tune() {
    cap_arenas();
    // SAFETY: mallopt only adjusts allocator parameters; the caller runs it before other
    // threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Caps glibc's malloc arenas at two; call first in `main`, before any other thread exists. By
/// default every thread that allocates may get an arena of its own (up to 8 per CPU), and
/// buffers freed on another thread stay resident in them: the daemon's runtime workers,
/// blocking threads and assembler threads, or the converter's compression workers, together
/// kept tens of MB of freed buffers. Two arenas measured the same speed in the daemon.
pub fn cap_arenas() {
    // SAFETY: as in `tune`.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
