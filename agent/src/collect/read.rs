//! One read of a terminal's whole log, under the device's one-working-session rule: the requested sync, the
//! scheduled sync and polling all read through here. The serial number is read in the same session, so the
//! watermark can tell a replaced terminal from the same one.

use essl_wire::Punch;
use essl_zk::attendance::AttendanceRecord;
use essl_zk::client::AttendanceRead;
use essl_zk::{ZkClient, ZkError};

use crate::config::Timing;
use crate::outbox::TerminalRead;
use crate::relay::devices::Device;
use crate::relay::jobs::format_local_time;

/// Reads the serial number and every attendance record; the terminal is released before this returns.
pub(crate) async fn read_terminal(
    device: &Device,
    timing: &Timing,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<TerminalRead, ZkError> {
    let mut session = device.session(timing).await?;
    let result = serial_and_records(&mut session.client, progress).await;
    session.close().await;
    let (serial, read) = result?;
    tracing::debug!(records = read.records.len(), layout = ?read.layout, %serial, "attendance read");
    Ok(TerminalRead { serial, records: read.records.iter().map(to_punch).collect() })
}

async fn serial_and_records(
    client: &mut ZkClient,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<(String, AttendanceRead), ZkError> {
    let serial = client.read_option("~SerialNumber").await?.unwrap_or_default();
    Ok((serial, client.read_attendance(progress).await?))
}

pub(crate) fn to_punch(r: &AttendanceRecord) -> Punch {
    Punch {
        uid: r.uid,
        user_id: r.user_id.clone(),
        local_time: format_local_time(r.timestamp),
        status: r.status,
        punch: r.punch,
    }
}
