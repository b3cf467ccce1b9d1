//! Every progress bar of the CLI. Bars draw on stderr only when it is a terminal, so piped and
//! JSON output stay clean.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

fn visible() -> bool {
    std::io::stderr().is_terminal()
}

/// A byte-count bar for downloads (`total` may be unknown).
pub fn bytes(label: &str, total: Option<u64>) -> ProgressBar {
    if !visible() {
        return ProgressBar::hidden();
    }
    let pb = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    pb.set_style(
        ProgressStyle::with_template("{msg:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    pb
}

/// An item-count bar (JSONL inputs, benchmark repeats).
pub fn items(label: &str, total: u64) -> ProgressBar {
    if !visible() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} eta {eta}").unwrap().progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    pb
}

/// Training steps; the message carries loss, learning rate and speed.
pub fn steps(label: &str, total: u64) -> ProgressBar {
    if !visible() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>6} [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_string());
    pb
}
