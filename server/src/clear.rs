//! Clearing a terminal's log, only when the cloud holds every record of it: the agent holds the terminal, makes
//! sure everything on it is acknowledged (sending what is not), and asks the hub, which checks this database
//! (`hub::session`, `ConfirmStored`), before it clears. Every attempt is written to the device's sync log.

use essl_wire::{ErrorKind, Op, OpResult};
use uuid::Uuid;

use crate::app::AppState;
use crate::hub::CallError;
use crate::metrics::OpLabels;
use crate::store::StoreError;
use crate::store::model::{Device, DeviceKind};

/// Why a terminal's log was not cleared. In every case nothing was cleared (a timeout says when it may have).
#[derive(Debug, thiserror::Error)]
pub enum ClearError {
    /// Not every record on the terminal is confirmed stored, or the clear cannot be made safe; the reason says
    /// which.
    #[error("{0}")]
    NotConfirmed(String),
    /// No agent could do it (unreachable terminal, no agent, a failure on the way).
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Clears `device`'s attendance log through an agent of its site; the number of records it held.
pub async fn clear_device(
    state: &AppState,
    device: &Device,
    caller: Uuid,
    sync_first: bool,
) -> Result<u64, ClearError> {
    let result = attempt(state, device, sync_first).await;
    let (outcome, level, line) = match &result {
        Ok(n) => {
            ("ok", "info", format!("attendance log cleared on the terminal by {caller}: {n} records, every one stored"))
        }
        Err(ClearError::NotConfirmed(why)) => ("refused", "warning", format!("clear refused (nothing cleared): {why}")),
        Err(e) => ("failed", "error", format!("clear failed (nothing cleared): {e}")),
    };
    state.metrics.device_requests.get_or_create(&OpLabels { op: "clear", outcome }).inc();
    match &result {
        Ok(records) => tracing::info!(device_id = %device.id, %caller, records, "attendance log cleared"),
        Err(error) => tracing::warn!(device_id = %device.id, %caller, %error, "attendance log not cleared"),
    }
    if let Err(error) = state.store.add_sync_log(device.id, None, level, &line).await {
        tracing::warn!(%error, device_id = %device.id, "cannot write the clear to the sync log");
    }
    result
}

async fn attempt(state: &AppState, device: &Device, sync_first: bool) -> Result<u64, ClearError> {
    if device.kind != DeviceKind::Pull {
        return Err(ClearError::NotConfirmed("a push device is not reached through an agent".into()));
    }
    if !device.active {
        return Err(ClearError::NotConfirmed("the device is not active: no agent works with it".into()));
    }
    let timeout = state.hub.config().sync_timeout;
    match state.hub.call(device, Op::ClearAttendance { sync_first }, timeout).await {
        Ok(r) => match r.result {
            OpResult::Cleared { records } => Ok(records),
            other => Err(ClearError::Failed(format!("the agent answered {other:?} to a clear"))),
        },
        Err(CallError::Failed { kind: ErrorKind::NotConfirmed, message }) => Err(ClearError::NotConfirmed(message)),
        Err(e @ CallError::Outdated { .. }) => Err(ClearError::NotConfirmed(e.to_string())),
        Err(CallError::Timeout(t)) => Err(ClearError::Failed(format!(
            "the agent did not finish within {} s and was told to stop; it clears nothing after that, but a clear \
             already under way may have completed: check the device",
            t.as_secs()
        ))),
        Err(e) => Err(ClearError::Failed(format!("nothing was cleared: {e}"))),
    }
}
