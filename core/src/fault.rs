//! Fault points: named places in the long-lived loops where a test can make the
//! process fail, to prove it does not go on half-alive (see [`crate::supervise`]).
//!
//! They are the `fail` crate's fail points, compiled into every build so that the
//! tests exercise the binary users run; an unconfigured point costs one lookup in an
//! empty map. They are configured only by `--failpoints` (`TURNQ_FAILPOINTS`), e.g.
//! `worker.writer=panic`; nothing else turns them on. The names are listed in
//! `CONTRIBUTING.md`.

pub use fail::fail_point;

/// Configures the fault points of `spec`: `name=action` pairs separated by `;`, where
/// `action` is one of the `fail` crate's (`panic`, `panic(message)`, `off`, …).
pub fn configure(spec: &str) -> Result<(), String> {
    for pair in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, action) = pair.split_once('=').ok_or_else(|| {
            format!("fault point {pair:?} is not name=action (e.g. worker.writer=panic)")
        })?;
        fail::cfg(name.trim(), action.trim()).map_err(|e| format!("fault point {name}: {e}"))?;
    }
    Ok(())
}
