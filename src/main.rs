//! The `arc-onboard` binary: a thin shell over [`arc_onboard::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(arc_onboard::cli::main()),
        Err(e) => {
            let e = anyhow::Error::new(e).context("cannot start the async runtime");
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
