//! Helpers shared by the simulator's integration tests.
#![allow(dead_code)]

use std::time::Duration;

use essl_zk::attendance::RecordLayout;
use essl_zk::{ClientConfig, Transport};
use essl_zk_sim::{Fixture, Simulator, Terminal, TerminalConfig, generate};

pub async fn start(fixture: &Fixture, config: TerminalConfig) -> Simulator {
    let terminal = Terminal::new(fixture, config).expect("valid fixture");
    Simulator::start("127.0.0.1:0".parse().expect("addr"), terminal).await.expect("bind simulator")
}

pub async fn start_generated(users: usize, records: usize, config: TerminalConfig) -> Simulator {
    start(&generate::generate(users, records, 7), config).await
}

pub fn client(transport: Transport, comm_key: u32) -> ClientConfig {
    ClientConfig { transport, comm_key, timeout: Duration::from_secs(5), ..ClientConfig::default() }
}

pub fn layout_config(layout: RecordLayout) -> TerminalConfig {
    TerminalConfig { record_layout: layout, ..TerminalConfig::default() }
}

pub const BOTH: [Transport; 2] = [Transport::Tcp, Transport::Udp];
