//! The `imgpack` binary: parses arguments, installs the Ctrl-C/SIGTERM handler, and runs the
//! library call; errors print `error: ` and their cause chain on stderr.

#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    // The first signal asks the work to stop cleanly. Work blocked on input that never comes
    // (a stalled upload on standard input) cannot notice, so a watchdog ends the process a few
    // seconds later; outputs and spill files are unnamed until committed, so ending at any
    // point leaves nothing behind.
    let _ = ctrlc::set_handler(move || {
        if !flag.swap(true, Ordering::Relaxed) {
            std::thread::spawn(|| {
                std::thread::sleep(std::time::Duration::from_secs(5));
                eprintln!("error: interrupted; no output was written");
                std::process::exit(130);
            });
        }
    });
    match cli::run(cli, Arc::clone(&cancel)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if e.kind() == imgpack::ErrorKind::Interrupted || cli::cancelled(&cancel) {
                eprintln!("error: interrupted; no output was written");
                return ExitCode::from(130);
            }
            let mut text = format!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!("\n  caused by: {cause}"));
                source = cause.source();
            }
            eprintln!("{text}");
            ExitCode::from(1)
        }
    }
}
