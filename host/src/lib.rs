//! The edgeq host: import, quantize, run and evaluate models (the `edgeq` CLI).
#![deny(unsafe_code)]
pub mod algo;
pub mod bench;
pub mod calib;
pub mod compare;
pub mod eval;
pub mod export;
pub mod gpu;
pub mod import;
pub mod inspect;
pub mod methods;
pub mod model_file;
pub mod npy;
pub mod plots;
pub mod quantize;
pub mod sanity;
pub mod sensitivity;
pub mod synth;
pub mod tensor_data;
pub mod text;
pub mod tiny;

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {elapsed_precise} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// A log line that shows above the progress bar, or on stderr when the bar
/// is hidden (not a terminal: CI logs, `2> file`).
pub fn log_line(pb: &indicatif::ProgressBar, msg: &str) {
    if pb.is_hidden() {
        eprintln!("{msg}");
    } else {
        pb.println(msg);
    }
}
