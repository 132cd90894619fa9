//! Helpers the workspace's tests share (a dev-dependency; the e2e harness also uses it):
//!
//! - [`noise`] / [`Rng`]: deterministic, incompressible test data, the same for a seed on every
//!   machine and build, so tests and cached e2e images are reproducible.
//! - [`skip_unless_root`]: how a root-only test skips, with its reason, when run as a normal user.

use std::io::Write;

/// A xorshift64 generator: fast and reproducible, not for anything but tests.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed` (any value, zero included; nearby seeds give unrelated
    /// streams).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value of the stream.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value uniform in `0.0..1.0`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `len` incompressible bytes determined by `seed`: the low byte of each [`Rng`] step.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// Whether this process runs as root. If not, says on stderr that the calling test is skipped
/// and why, so a root-only test run by a normal user reports itself instead of failing:
///
/// ```
/// if chunksnap_testkit::skip_unless_root("overlayfs mounts") {
///     return;
/// }
/// ```
/// The line goes straight to the process's stderr (libtest's capture would hide it).
pub fn skip_unless_root(needs: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or("test");
    let _ = writeln!(
        std::io::stderr().lock(),
        "skipped: {test}: needs root for {needs}"
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_reproducible_and_does_not_compress() {
        assert_eq!(noise(7, 4096), noise(7, 4096));
        assert_ne!(noise(7, 4096), noise(8, 4096));
        assert_eq!(noise(7, 100), noise(7, 4096)[..100]);
        // Every byte value shows up about equally often.
        let data = noise(1, 1 << 16);
        let mut counts = [0u32; 256];
        for b in &data {
            counts[*b as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (150..370).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn the_stream_never_changes() {
        // Tests and cached e2e images are built from these bytes: a change must be deliberate.
        assert_eq!(noise(1, 8), [173, 118, 54, 116, 236, 121, 207, 234]);
    }

    #[test]
    fn next_f64_stays_in_the_unit_interval() {
        let mut rng = Rng::new(3);
        let xs: Vec<f64> = (0..10_000).map(|_| rng.next_f64()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((0.45..0.55).contains(&mean), "{mean}");
    }
}
