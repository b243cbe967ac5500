//! The one place a guard's `Drop` runs async clean-up.
//!
//! `Drop` cannot await, and it may run inside the test's runtime (which must not block)
//! or while that runtime shuts down after a failed assertion. So the clean-up runs on a
//! thread of its own with a small runtime, and the drop waits for it: a test leaves no
//! database or Redis key behind, however it ended.

use std::{fmt::Display, future::Future, time::Duration};

/// The longest a clean-up may take; a server that went away (a test's private Redis)
/// must not hang the test.
const LIMIT: Duration = Duration::from_secs(30);

/// Runs `cleanup` to completion from synchronous code; a failure is printed (the test
/// has its result already), never raised.
pub fn run_blocking<F, E>(what: impl Display + Send + 'static, cleanup: F)
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    let outcome = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            match tokio::time::timeout(LIMIT, cleanup).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("timed out after {LIMIT:?}")),
            }
        })
    })
    .join();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("test clean-up: {what}: {e}"),
        Err(_) => eprintln!("test clean-up: {what}: the clean-up thread panicked"),
    }
}
