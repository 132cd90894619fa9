//! Checking a remotely assembled layer before it is committed (see `chunksnap_core::verify`),
//! and the operator's opt-out.
//!
//! The anchor is containerd's own extraction Prepare: it names the parent's chainID and labels
//! the target with the layer's chainID (`containerd.io/snapshot.ref`), both derived from the
//! image config that the manifest digest covers. The node rebuilds the layer tar from what it
//! assembles, as it assembles it, and commits only if `chainID(parent, sha256(tar))` is that
//! target.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use chunksnap_core::assemble::{
    AssembleOptions, AssembleStats, ChunkReader, Progress, assemble_layer_with,
};
use chunksnap_core::verify::{AssembledContent, VerifyError, check_chain, verify_tar};
use chunksnap_format::digest::Digest;
use chunksnap_format::pb::LayerIndex;

use super::error::RemoteError;

/// Which registries' layers are committed without verification (`insecure_skip_layer_verification`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyPolicy {
    skip_all: bool,
    skip: BTreeSet<String>,
}

impl VerifyPolicy {
    /// From the configured list: registry hosts (`host[:port]`), or `*` for every registry.
    pub fn new(skip: &[String]) -> Self {
        Self {
            skip_all: skip.iter().any(|h| h == "*"),
            skip: skip.iter().filter(|h| *h != "*").cloned().collect(),
        }
    }

    /// Whether layers from `registry` are committed unverified.
    pub fn skips(&self, registry: &str) -> bool {
        self.skip_all || self.skip.contains(registry)
    }

    /// Says at start what is not verified, so the risk is visible in the log.
    pub fn log_start(&self) {
        if self.skip_all {
            tracing::warn!(
                "insecure_skip_layer_verification: remotely assembled layers of EVERY registry are committed without checking their diffID; a forged chunksnap artifact can change any image's files"
            );
        } else if !self.skip.is_empty() {
            tracing::warn!(
                registries = ?self.skip,
                "insecure_skip_layer_verification: remotely assembled layers of these registries are committed without checking their diffID; a forged chunksnap artifact can change their images' files"
            );
        }
    }
}

/// The chainID a layer must verify to: containerd's extraction Prepare names the `parent` and
/// labels the `target`.
pub struct Expected {
    pub parent: String,
    pub target: String,
}

/// Assembles `index` into `dir` and, with `expected`, proves it is the layer containerd commits
/// as that target: the layer stream is rebuilt from the files as the assembler finishes them
/// and hashed on other threads alongside the assembly. Returns what was written and how long
/// verification went on after the assembly. Blocking; stops soon after `opts.cancel` is set.
pub fn assemble_checked(
    index: &LayerIndex,
    dir: &Path,
    chunks: &dyn ChunkReader,
    opts: &AssembleOptions<'_>,
    expected: Option<&Expected>,
) -> Result<(AssembleStats, Duration), RemoteError> {
    let Some(expected) = expected else {
        return Ok((
            assemble_layer_with(index, chunks, dir, opts)?,
            Duration::ZERO,
        ));
    };
    let progress = Progress::new(index.entries.len());
    let opts = AssembleOptions {
        progress: Some(&progress),
        ..*opts
    };
    let never = AtomicBool::new(false);
    let cancel = opts.cancel.unwrap_or(&never);
    std::thread::scope(|s| {
        let checker = s.spawn(|| -> Result<Digest, VerifyError> {
            let source = AssembledContent::new(index, dir, chunks, Some(cancel))
                .map_err(VerifyError::Read)?
                .while_assembled(&progress);
            let diff_id = verify_tar(index, source)?;
            check_chain(&expected.parent, &expected.target, &diff_id)?;
            Ok(diff_id)
        });
        let assembled = assemble_layer_with(index, chunks, dir, &opts);
        progress.finish(assembled.is_ok());
        let tail = Instant::now();
        let checked = checker
            .join()
            .unwrap_or_else(|_| Err(VerifyError::Read(io::Error::other("verifier panicked"))));
        let stats = assembled?;
        checked?;
        Ok((stats, tail.elapsed()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_skips_listed_registries_or_all() {
        let none = VerifyPolicy::new(&[]);
        assert!(!none.skips("r.example"));
        let some = VerifyPolicy::new(&["r.example:5000".into()]);
        assert!(some.skips("r.example:5000"));
        assert!(!some.skips("r.example"));
        assert!(VerifyPolicy::new(&["*".into()]).skips("anything"));
    }
}
