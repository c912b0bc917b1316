//! Signals: the first SIGINT or SIGTERM asks for a graceful stop (finish
//! the batch, checkpoint, release leases); a second SIGINT exits at once.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// A token cancelled by the first SIGINT or SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let (Ok(mut interrupt), Ok(mut terminate)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("stop requested; finishing in-flight batches (interrupt again to force)");
        cancel.cancel();
        interrupt.recv().await;
        tracing::warn!("forced exit");
        std::process::exit(130);
    });
    token
}
