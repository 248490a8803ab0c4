//! Shutdown as a value: one [`Trigger`] owned by whoever decides (signal handler, tests),
//! any number of cloned [`Signal`]s awaited by the parts that must react.

use tokio::sync::watch;

/// Starts a shutdown.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Resolves once shutdown has started.
#[derive(Debug, Clone)]
pub struct Signal(watch::Receiver<bool>);

/// A connected trigger and signal.
pub fn channel() -> (Trigger, Signal) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Signal(rx))
}

impl Trigger {
    /// Starts the shutdown (idempotent).
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Signal {
    /// Whether shutdown has started.
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until shutdown starts (at once if it has). A dropped trigger counts as fired.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
}

/// SIGINT and SIGTERM, caught from the moment [`OsSignals::listen`] is called: one that
/// comes while the server is still starting waits for it instead of killing the process
/// (found by `tests/shutdown.rs`: a SIGTERM right after the listeners answered could beat
/// the handler, and the process died of the signal).
#[derive(Debug)]
pub struct OsSignals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl OsSignals {
    /// Installs the handlers now. Needs a tokio runtime.
    pub fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                (Ok(term), Ok(int)) => Some((term, int)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot catch SIGTERM/SIGINT; only Ctrl-C stops the server cleanly");
                    None
                }
            };
            OsSignals { streams }
        }
        #[cfg(not(unix))]
        {
            OsSignals {}
        }
    }

    /// Resolves on the first SIGINT or SIGTERM since [`OsSignals::listen`].
    pub async fn recv(self) {
        #[cfg(unix)]
        if let Some((mut term, mut int)) = self.streams {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
