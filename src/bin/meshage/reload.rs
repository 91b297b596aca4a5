//! Files a running node rereads without a restart (the keyring, the API tokens): checked for a
//! change every second, and reread at once on SIGHUP.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

/// How often a watched file's metadata is checked for a change.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What identifies a version of a file without reading it.
#[derive(PartialEq, Eq, Clone, Copy)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// Rereads `path` whenever it changes or the process gets SIGHUP, and hands its text to
/// `apply`, which returns whether anything changed or why the text is not usable (that
/// error must not contain the file's text: it is logged). A file that cannot be read or used
/// leaves what was in force. Runs until the process ends.
pub(crate) fn watch<F>(path: PathBuf, what: &'static str, apply: F)
where
    F: Fn(&str) -> Result<bool, String> + Send + 'static,
{
    tokio::spawn(async move {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => Some(hangup),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; {what} is reread only when it changes");
                None
            }
        };
        let mut seen = stamp(&path);
        let mut ticker = tokio::time::interval(CHECK_EVERY);
        loop {
            let forced = tokio::select! {
                _ = ticker.tick() => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
            };
            let now = stamp(&path);
            if !forced && now == seen {
                continue;
            }
            seen = now;
            match std::fs::read_to_string(&path) {
                Ok(text) => match apply(&text) {
                    Ok(true) => info!(file = %path.display(), "{what} reloaded"),
                    Ok(false) => {}
                    Err(e) => {
                        warn!(file = %path.display(), error = %e, "{what} not reloaded; the previous one stays in force")
                    }
                },
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot read {what}; the previous one stays in force")
                }
            }
        }
    });
}

/// Calls `reload` each time the process gets SIGHUP, for what the library already rereads on
/// a change (the API tokens). `reload` returns whether anything changed, or why not (never the
/// file's text).
pub(crate) fn on_hangup<F>(what: &'static str, reload: F)
where
    F: Fn() -> Result<bool, String> + Send + 'static,
{
    tokio::spawn(async move {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => hangup,
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; {what} is reread only when it changes");
                return;
            }
        };
        while hangup.recv().await.is_some() {
            match reload() {
                Ok(true) => info!("{what} reloaded on SIGHUP"),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "{what} not reloaded; the previous ones stay in force"),
            }
        }
    });
}
