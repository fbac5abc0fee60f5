//! Realistic, reproducible data for a simulated terminal: an office's staff and their punches.

use essl_zk::attendance::AttendanceRecord;
use essl_zk::user::User;
use jiff::ToSpan;
use jiff::civil::{DateTime, date};

use crate::fixture::{DeviceFixture, Fixture, PunchFixture, UserFixture};
use crate::rng::Rng;

const FIRST: &[&str] = &[
    "Aarav", "Priya", "Rahul", "Ananya", "Vikram", "Sneha", "Arjun", "Kavya", "Rohan", "Meera", "José", "Zoë", "Renée",
    "Łukasz", "Søren", "Анна", "李娜", "Ayşe", "Nguyễn", "Fatima",
];
const LAST: &[&str] =
    &["Sharma", "Iyer", "Patel", "Reddy", "Nair", "Gupta", "Khan", "Das", "Müller", "García", "O'Brien", "Kowalski"];

/// The identity every generated terminal reports.
pub fn default_device() -> DeviceFixture {
    DeviceFixture {
        serial_number: "CEXJ201260001".into(),
        device_name: "eSSL X990".into(),
        platform: "ZEM560_TFT".into(),
        firmware: "Ver 6.60 Apr 26 2016".into(),
        mac: "00:17:61:10:2c:55".into(),
    }
}

/// `users` staff and `records` punches, the same for the same seed. Punch times rise strictly, so no two records
/// share a (user, time) pair.
pub fn generate(users: usize, records: usize, seed: u64) -> Fixture {
    let mut rng = Rng::new(seed);
    let users: Vec<User> = (1..=users.min(65_535))
        .map(|i| {
            let name = format!("{} {}", FIRST[rng.below(FIRST.len())], LAST[rng.below(LAST.len())]);
            let mut name = name.as_str();
            while name.len() > 23 {
                name = &name[..name.char_indices().last().map(|(i, _)| i).unwrap_or(0)];
            }
            User {
                uid: i as u16,
                privilege: if i == 1 { 14 } else { 0 },
                password: if rng.below(10) == 0 { format!("{}", rng.below(10_000)) } else { String::new() },
                name: name.to_owned(),
                card: if rng.below(3) == 0 { 1_000_000 + rng.below(9_000_000) as u32 } else { 0 },
                group_id: "1".into(),
                user_id: (1000 + i).to_string(),
            }
        })
        .collect();
    let mut t: DateTime = date(2025, 1, 6).at(8, 0, 0, 0);
    let mut attendance = Vec::with_capacity(records);
    for _ in 0..records {
        t = t.saturating_add((1 + rng.below(90) as i64).seconds());
        if t.hour() >= 19 {
            t = t.date().saturating_add(1.day()).at(8, rng.below(30) as i8, 0, 0);
        }
        let (uid, user_id) = match users.get(rng.below(users.len().max(1))) {
            Some(u) => (u.uid, u.user_id.clone()),
            None => (1, "1001".to_owned()),
        };
        let record = AttendanceRecord {
            uid,
            user_id,
            timestamp: t.into(),
            status: if rng.below(5) == 0 { 15 } else { 1 },
            punch: if t.hour() < 13 { 0 } else { 1 },
        };
        attendance.push(PunchFixture::from(&record));
    }
    Fixture { device: default_device(), users: users.iter().map(UserFixture::from).collect(), attendance }
}
