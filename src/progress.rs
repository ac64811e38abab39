//! One progress-bar factory: bars on a terminal, nothing when output is piped or logged
//! (then plain `tracing` lines carry the progress).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A bar of `len` steps with a message; hidden when stderr is not a terminal.
pub fn bar(len: u64, msg: impl Into<String>) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::stderr());
    } else {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(msg.into());
    pb
}

/// A spinner with a changing message for work of unknown length; hidden when stderr is not a
/// terminal (each message is then logged at info level).
pub fn spinner(msg: impl Into<String>) -> Spinner {
    let pb = ProgressBar::new_spinner();
    let visible = std::io::stderr().is_terminal();
    if visible {
        pb.set_draw_target(ProgressDrawTarget::stderr());
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
    } else {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{spinner} {prefix}: {msg} ({elapsed})")
            .expect("valid template"),
    );
    pb.set_prefix(msg.into());
    Spinner { pb, visible }
}

/// See [`spinner`].
pub struct Spinner {
    pb: ProgressBar,
    visible: bool,
}

impl Spinner {
    pub fn set_message(&self, m: String) {
        if !self.visible {
            tracing::info!("{}: {m}", self.pb.prefix());
        }
        self.pb.set_message(m);
    }
    pub fn finish_and_clear(&self) {
        self.pb.finish_and_clear();
    }
}
