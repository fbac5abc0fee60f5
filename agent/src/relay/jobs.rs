//! Device work requested by the server. Every request runs in its own task, so a slow or dead terminal never
//! holds up another; sessions with one terminal are still taken one at a time (see `devices`). `Cancel` aborts
//! the task; its response says `Cancelled`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use essl_wire::{AgentMsg, DeviceInfo, ErrorKind, Op, OpError, OpResult, Outcome};
use essl_zk::ZkError;
use jiff::civil::DateTime;
use tokio::task::{AbortHandle, Id, JoinSet};
use tracing::Instrument;

use super::clear::{self, Verdicts};
use super::devices::{Device, DeviceTable};
use super::outgoing::Out;
use super::sync;
use crate::collect::to_device_user;
use crate::config::Timing;
use crate::outbox::Outbox;

/// What every job needs; cheap to clone.
#[derive(Clone)]
pub(crate) struct JobCtx {
    pub devices: DeviceTable,
    pub out: Out,
    pub outbox: Outbox,
    /// This connection's number: a sync's batches carry its request id only on this connection.
    pub conn: u64,
    /// The protocol version the server chose in `Welcome`.
    pub protocol: u16,
    /// Clears of this connection waiting for the server's `Stored`.
    pub verdicts: Verdicts,
    pub timing: Arc<Timing>,
}

/// The requests in flight on one connection. Dropping it aborts them all.
pub(crate) struct Jobs {
    ctx: JobCtx,
    tasks: JoinSet<Outcome>,
    request_of: HashMap<Id, u64>,
    running: HashMap<u64, AbortHandle>,
}

impl Jobs {
    pub fn new(ctx: JobCtx) -> Jobs {
        Jobs { ctx, tasks: JoinSet::new(), request_of: HashMap::new(), running: HashMap::new() }
    }

    /// Starts a request in its own task. A request that cannot start (unknown device, id already running) is
    /// answered at once: the response is returned for the caller to send.
    pub fn start(&mut self, id: u64, device: String, op: Op) -> Option<AgentMsg> {
        if self.running.contains_key(&id) {
            return Some(response(id, Err(failure(ErrorKind::Internal, format!("request {id} is already running")))));
        }
        let Some(device) = self.ctx.devices.get(&device) else {
            let message = format!("device {device:?} is not one of this site's devices");
            return Some(response(id, Err(failure(ErrorKind::UnknownDevice, message))));
        };
        let span = tracing::info_span!("request", id, device = %device.spec.id, op = op_name(&op));
        let ctx = self.ctx.clone();
        let handle = self.tasks.spawn(
            async move {
                let started = Instant::now();
                let result = execute(&ctx, id, &device, op).await;
                let elapsed_ms = started.elapsed().as_millis() as u64;
                match &result {
                    Ok(_) => tracing::debug!(elapsed_ms, "request done"),
                    Err(e) => tracing::info!(elapsed_ms, kind = ?e.kind, error = %e.message, "request failed"),
                }
                match result {
                    Ok(r) => Outcome::Ok(r),
                    Err(e) => Outcome::Err(e),
                }
            }
            .instrument(span),
        );
        self.request_of.insert(handle.id(), id);
        self.running.insert(id, handle);
        None
    }

    /// Aborts a running request; unknown ids (already finished) are ignored.
    pub fn cancel(&mut self, id: u64) {
        if let Some(handle) = self.running.get(&id) {
            tracing::debug!(id, "request cancelled by the server");
            handle.abort();
        }
    }

    /// The response of the next request to finish; `None` at once when nothing runs (disables a `select!` arm).
    pub async fn next_done(&mut self) -> Option<AgentMsg> {
        let (task, outcome) = match self.tasks.join_next_with_id().await? {
            Ok(done) => done,
            Err(e) => {
                let outcome = if e.is_cancelled() {
                    Outcome::Err(failure(ErrorKind::Cancelled, "cancelled".into()))
                } else {
                    tracing::error!(error = %e, "a request task panicked");
                    Outcome::Err(failure(ErrorKind::Internal, "the agent failed while doing this request".into()))
                };
                (e.id(), outcome)
            }
        };
        let id = self.request_of.remove(&task)?;
        self.running.remove(&id);
        Some(AgentMsg::Response { id, outcome })
    }
}

async fn execute(ctx: &JobCtx, id: u64, device: &Device, op: Op) -> Result<OpResult, OpError> {
    let work = match op {
        Op::Probe => {
            let rtt = device.probe(&ctx.timing).await.map_err(zk_error)?;
            return Ok(OpResult::Probe { rtt_us: u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX) });
        }
        Op::SyncAttendance => return sync::run(ctx, id, device).await,
        Op::ReadUsers => Work::Users,
        Op::DeviceInfo => Work::Info,
        Op::GetTime => Work::GetTime,
        // Checked before the terminal is touched.
        Op::SetTime { local_time } => Work::SetTime(parse_local_time(&local_time)?),
        Op::ClearAttendance { sync_first } => return clear::run(ctx, id, device, sync_first).await,
    };
    let mut session = device.session(&ctx.timing).await.map_err(zk_error)?;
    let c = &mut session.client;
    let result = match work {
        Work::Users => c
            .read_users()
            .await
            .map(|(_, users)| OpResult::Users { users: users.into_iter().map(to_device_user).collect() }),
        Work::Info => c.device_info().await.map(|i| {
            OpResult::Info(DeviceInfo {
                serial_number: i.serial_number,
                device_name: i.device_name,
                platform: i.platform,
                firmware: i.firmware,
                mac: i.mac,
                users: i.sizes.users.into(),
                records: i.sizes.records.into(),
                fingerprints: i.sizes.fingers.into(),
            })
        }),
        Work::GetTime => c.get_time().await.map(|t| OpResult::Time { local_time: format_local_time(t) }),
        Work::SetTime(t) => c.set_time(t).await.map(|()| OpResult::Done),
    };
    session.close().await;
    result.map_err(zk_error)
}

/// The simple operations: one session, one call.
enum Work {
    Users,
    Info,
    GetTime,
    SetTime(DateTime),
}

const LOCAL_TIME: &str = "%Y-%m-%dT%H:%M:%S";

/// A terminal's wall-clock time as it travels: `YYYY-MM-DDTHH:MM:SS`.
pub(crate) fn format_local_time(t: DateTime) -> String {
    t.strftime(LOCAL_TIME).to_string()
}

fn parse_local_time(text: &str) -> Result<DateTime, OpError> {
    DateTime::strptime(LOCAL_TIME, text).map_err(|e| {
        failure(ErrorKind::Protocol, format!("SetTime: {text:?} is not a local time YYYY-MM-DDTHH:MM:SS ({e})"))
    })
}

pub(crate) fn failure(kind: ErrorKind, message: String) -> OpError {
    OpError { kind, message }
}

/// A terminal error as the server sees it: the class decides whether another agent is tried.
pub(crate) fn zk_error(e: ZkError) -> OpError {
    let kind = match e.kind() {
        essl_zk::ErrorKind::Unreachable => ErrorKind::Unreachable,
        essl_zk::ErrorKind::AuthFailed => ErrorKind::AuthFailed,
        essl_zk::ErrorKind::Busy => ErrorKind::Busy,
        essl_zk::ErrorKind::Protocol => ErrorKind::Protocol,
    };
    failure(kind, e.to_string())
}

fn response(id: u64, result: Result<OpResult, OpError>) -> AgentMsg {
    let outcome = match result {
        Ok(r) => Outcome::Ok(r),
        Err(e) => Outcome::Err(e),
    };
    AgentMsg::Response { id, outcome }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Probe => "probe",
        Op::SyncAttendance => "sync_attendance",
        Op::ReadUsers => "read_users",
        Op::DeviceInfo => "device_info",
        Op::GetTime => "get_time",
        Op::SetTime { .. } => "set_time",
        Op::ClearAttendance { .. } => "clear_attendance",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_time_round_trips_and_rejects_garbage() {
        let t = parse_local_time("2025-11-24T09:01:02").expect("valid");
        assert_eq!(format_local_time(t), "2025-11-24T09:01:02");
        for bad in ["", "2025-11-24 09:01:02", "2025-13-01T00:00:00", "2025-11-24T09:01:02Z"] {
            assert_eq!(parse_local_time(bad).expect_err(bad).kind, ErrorKind::Protocol);
        }
    }

    #[test]
    fn error_kinds_map() {
        let unreachable = zk_error(ZkError::Timeout(std::time::Duration::from_secs(3)));
        assert_eq!(unreachable.kind, ErrorKind::Unreachable);
        assert_eq!(zk_error(ZkError::AuthFailed).kind, ErrorKind::AuthFailed);
        assert_eq!(zk_error(ZkError::Busy(1)).kind, ErrorKind::Busy);
        assert_eq!(zk_error(ZkError::Unexpected("x".into())).kind, ErrorKind::Protocol);
    }
}
