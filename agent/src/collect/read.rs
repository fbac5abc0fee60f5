//! One read of a terminal's whole log, under the device's one-working-session rule: the requested sync, the
//! scheduled sync and polling all read through here. The serial number is read in the same session, so the
//! watermark can tell a replaced terminal from the same one, and so is the user list (after the records: whoever
//! punched was enrolled by then), so the server can flag punches of users the terminal does not know.

use essl_wire::{DeviceUser, Punch};
use essl_zk::attendance::{AttendanceRecord, RecordTime};
use essl_zk::client::AttendanceRead;
use essl_zk::user::User;
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
    let (serial, read, users) = result?;
    tracing::debug!(records = read.records.len(), layout = ?read.layout, %serial, users = ?users.as_ref().map(Vec::len), "attendance read");
    let invalid = read.records.iter().filter(|r| r.timestamp.valid().is_none()).count();
    if invalid > 0 {
        tracing::warn!(
            device = %device.spec.id,
            invalid,
            records = read.records.len(),
            "records whose time is no date (corrupt on the terminal): kept and sent with their raw value, flagged"
        );
    }
    Ok(TerminalRead {
        serial,
        records: read.records.iter().map(to_punch).collect(),
        users: users.map(|list| list.into_iter().map(to_device_user).collect()),
    })
}

async fn serial_and_records(
    client: &mut ZkClient,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<(String, AttendanceRead, Option<Vec<User>>), ZkError> {
    let serial = client.read_option("~SerialNumber").await?.unwrap_or_default();
    let mut read = client.read_attendance(progress).await?;
    let users = match read.users.take() {
        Some(users) => Some(users),
        // The records are what matters: a user table the terminal cannot give (or we cannot decode) leaves the
        // punches unflagged, never unsent. A broken session fails the next step anyway.
        None => match client.read_users().await {
            Ok((_, users)) => Some(users),
            Err(error) => {
                tracing::warn!(%error, "cannot read the terminal's users; its punches go without the unknown-user check");
                None
            }
        },
    };
    Ok((serial, read, users))
}

/// A user as it travels: the keypad password stays on the LAN.
pub(crate) fn to_device_user(u: User) -> DeviceUser {
    DeviceUser {
        uid: u.uid,
        user_id: u.user_id,
        name: u.name,
        privilege: u.privilege,
        card: u.card,
        group_id: u.group_id,
    }
}

/// A record as it travels. A time field that is no date goes as its raw value, with the placeholder local time
/// (`essl_wire::invalid_time_placeholder`) that keeps the server's unique key meaningful.
pub(crate) fn to_punch(r: &AttendanceRecord) -> Punch {
    let (local_time, raw_time) = match r.timestamp {
        RecordTime::Valid(t) => (format_local_time(t), None),
        RecordTime::Invalid(raw) => (essl_wire::invalid_time_placeholder(raw), Some(raw)),
    };
    Punch { uid: r.uid, user_id: r.user_id.clone(), local_time, status: r.status, punch: r.punch, raw_time }
}
