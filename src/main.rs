//! The `arc-onboard` binary: a thin shell over [`arc_onboard::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    cap_malloc_arenas();
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

/// glibc gives every thread that contends for malloc an arena of its own (up to 8 per core), and each keeps
/// freed memory: an idle daemon sat at about 31 MiB RSS at 1,000 instances, 28.8 MiB with two arenas. Cap
/// them at two unless the operator set `MALLOC_ARENA_MAX` (glibc reads it itself).
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first in main, before the runtime starts any thread; mallopt only sets a
        // tunable of the allocator.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
