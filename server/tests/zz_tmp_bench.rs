use essl_server::store::*;
use jiff::{SignedDuration, Timestamp};
use std::time::Instant;

fn punches(n: usize) -> Vec<NewPunch> {
    let start: jiff::civil::DateTime = "2024-01-01T00:00:00".parse().expect("x");
    (0..n)
        .map(|i| {
            let t = start.checked_add(SignedDuration::from_secs(i as i64)).expect("x");
            NewPunch {
                user_id: format!("{}", i % 1000),
                uid: 1,
                local_time: t,
                punched_at: Timestamp::from_second(1_700_000_000 + i as i64).expect("x"),
                status: 1,
                punch: 0,
                flags: 0,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench() {
    for url in [std::env::var("U").unwrap_or("sqlite::memory:".into())] {
        let store = Store::connect(&url).await.expect("c");
        let d = store
            .create_device(&NewDevice {
                name: "x".into(),
                kind: DeviceKind::Pull,
                ip_address: "".into(),
                port: 1,
                comm_key: 0,
                udp: false,
                serial_number: None,
                timezone: "UTC".into(),
                site_id: None,
                active: true,
            })
            .await
            .expect("d");
        let d2 = store
            .create_device(&NewDevice {
                name: "y".into(),
                kind: DeviceKind::Pull,
                ip_address: "".into(),
                port: 1,
                comm_key: 0,
                udp: false,
                serial_number: None,
                timezone: "UTC".into(),
                site_id: None,
                active: true,
            })
            .await
            .expect("d");
        let n: usize = std::env::var("N").ok().and_then(|s| s.parse().ok()).unwrap_or(12000);
        let p = punches(n);
        let t = Instant::now();
        let a = store.insert_punches(d.id, &p).await.expect("i");
        eprintln!("{url} bulk {a} in {:?}", t.elapsed());
        let t = Instant::now();
        let a = store.insert_punches_naive(d2.id, &p).await.expect("i");
        eprintln!("{url} naive {a} in {:?}", t.elapsed());
    }
}
