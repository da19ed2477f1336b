//! Serial scanners (RS-232, USB CDC-ACM): open the port, read frames, and reopen it when the
//! device is unplugged and comes back.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    interrupted, pump, sleep_unless_shutdown, FrameAssembler, ScanEvent, ScanFilter, StreamEnd,
    READ_POLL,
};
use crate::devices::config::ScannerConfig;

/// The serial scanner thread: open, read until the port fails, reopen every
/// `reconnect_interval`, until shutdown or until nobody listens.
pub fn run(
    cfg: &ScannerConfig,
    mut frames: FrameAssembler,
    mut filter: ScanFilter,
    tx: mpsc::Sender<ScanEvent>,
    shutdown: CancellationToken,
) {
    let Some(path) = cfg
        .device
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
    else {
        tracing::error!("[scanner] kind = \"serial\" needs a device; no scans from the scanner");
        return;
    };
    let mut warned = false;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let port = serialport::new(&path, cfg.baud).timeout(READ_POLL).open();
        let mut port = match port {
            Ok(p) => p,
            Err(e) => {
                if !warned {
                    tracing::warn!(device = %path, error = %e, "scanner not available, retrying");
                    warned = true;
                }
                if !sleep_unless_shutdown(cfg.reconnect_interval, &shutdown) {
                    return;
                }
                continue;
            }
        };
        warned = false;
        tracing::info!(device = %path, baud = cfg.baud, "scanner connected");
        let end = pump(&mut port, &mut frames, &mut filter, &tx, &shutdown);
        drop(port);
        match end {
            StreamEnd::Shutdown | StreamEnd::ReceiverGone => return,
            StreamEnd::Eof => tracing::warn!(device = %path, "scanner disconnected"),
            StreamEnd::Failed(e) => {
                tracing::warn!(device = %path, error = %e, "scanner disconnected")
            }
        }
        if let Some(n) = frames.reset() {
            if !interrupted(&tx, n) {
                return;
            }
        }
        if !sleep_unless_shutdown(cfg.reconnect_interval, &shutdown) {
            return;
        }
    }
}
