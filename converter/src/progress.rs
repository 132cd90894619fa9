//! Progress bars (indicatif) for a terminal; invisible otherwise, so logs and `--json` output
//! stay clean when stderr is not a TTY.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress display shared by concurrent layer conversions.
#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Bars on stderr when `enabled` (callers pass "stderr is a terminal").
    pub fn new(enabled: bool) -> Self {
        let multi = enabled.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self { multi }
    }

    /// No output at all.
    pub fn hidden() -> Self {
        Self { multi: None }
    }

    /// A byte-count bar for one layer (hidden when progress is off).
    pub fn layer(&self, name: &str, total: Option<u64>) -> ProgressBar {
        let Some(multi) = &self.multi else {
            return ProgressBar::hidden();
        };
        let bar = multi.add(ProgressBar::new(total.unwrap_or(0)));
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:>19} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(name.to_owned());
        bar
    }

    /// A one-line status message above the bars (nothing when progress is off).
    pub fn println(&self, msg: &str) {
        if let Some(multi) = &self.multi {
            let _ = multi.println(msg);
        }
    }
}

/// A short display name for a digest: `sha256:` and the first 12 hex digits.
pub fn short(digest: &impl std::fmt::Display) -> String {
    let s = digest.to_string();
    s.chars().take(19).collect()
}
