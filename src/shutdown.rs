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

/// Resolves on SIGINT or SIGTERM.
pub async fn os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
