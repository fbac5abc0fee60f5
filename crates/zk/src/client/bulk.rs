//! Buffered bulk reads (zk-protocol.md §6): prepare the table, fetch it chunk by chunk, free it.
//!
//! Chunks are requested one at a time (pipelining stalls real terminals); each has its own deadline and is asked
//! for again on failure. Sizes come from the terminal and are checked before anything is allocated.

use tokio::time::Instant;

use super::{ZkClient, refusal};
use crate::consts::*;
use crate::error::ZkError;

impl ZkClient {
    /// Reads a whole table (attendance, users, ...) and returns its bytes, starting with the u32 size field.
    pub async fn read_table(
        &mut self,
        table_command: u16,
        function: i32,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<Vec<u8>, ZkError> {
        let mut req = Vec::with_capacity(11);
        req.push(1);
        req.extend_from_slice(&table_command.to_le_bytes());
        req.extend_from_slice(&function.to_le_bytes());
        req.extend_from_slice(&0i32.to_le_bytes());
        let reply = self.request(CMD_PREPARE_BUFFER, &req).await?;
        let total = match reply.command {
            // Small tables come back inline.
            CMD_DATA => {
                progress(reply.payload.len(), reply.payload.len());
                return Ok(reply.payload);
            }
            CMD_ACK_OK | CMD_PREPARE_DATA => match reply.payload.get(1..5) {
                Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
                None => return Err(ZkError::Unexpected(format!("data stat of {} bytes", reply.payload.len()))),
            },
            code => return Err(refusal(CMD_PREPARE_BUFFER, code)),
        };
        if total > self.cfg.max_table_bytes {
            return Err(ZkError::Unexpected(format!(
                "terminal announces a {total}-byte table, above the limit of {}",
                self.cfg.max_table_bytes
            )));
        }
        let max_chunk = match self.transport() {
            super::Transport::Tcp => MAX_CHUNK_TCP as usize,
            super::Transport::Udp => MAX_CHUNK_UDP as usize,
        };
        // Grows with the data actually received, so a lying size costs nothing up front beyond this cap.
        let mut data = Vec::with_capacity(total.min(4 * 1024 * 1024));
        progress(0, total);
        while data.len() < total {
            let start = data.len();
            let len = (total - start).min(max_chunk);
            let mut attempt = 0;
            loop {
                match self.read_chunk(start, len, &mut data).await {
                    Ok(()) => break,
                    Err(e) if attempt < self.cfg.chunk_retries && is_retryable(&e) => {
                        attempt += 1;
                        data.truncate(start);
                        tracing::debug!(error = %e, start, len, attempt, "retrying chunk");
                    }
                    Err(e) => return Err(e),
                }
            }
            progress(data.len(), total);
        }
        self.command_ok(CMD_FREE_DATA, &[]).await?;
        Ok(data)
    }

    /// One `CMD_READ_BUFFER` exchange: `PREPARE_DATA`, `DATA`..., `ACK_OK`; or a single `DATA`.
    async fn read_chunk(&mut self, start: usize, len: usize, data: &mut Vec<u8>) -> Result<(), ZkError> {
        let mut req = Vec::with_capacity(8);
        req.extend_from_slice(&(start as i32).to_le_bytes());
        req.extend_from_slice(&(len as i32).to_le_bytes());
        let reply = self.request(CMD_READ_BUFFER, &req).await?;
        let want = start + len;
        let mut prepared = false;
        let mut p = reply;
        loop {
            match p.command {
                CMD_PREPARE_DATA => {
                    let announced = p.payload.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                    if announced.is_some_and(|a| a as usize != len) {
                        return Err(ZkError::Unexpected(format!("chunk of {announced:?} bytes, asked for {len}")));
                    }
                    prepared = true;
                }
                CMD_DATA => {
                    if data.len() + p.payload.len() > want {
                        return Err(ZkError::Unexpected(format!(
                            "chunk overflows: {} bytes beyond the {len} asked for",
                            data.len() + p.payload.len() - want
                        )));
                    }
                    data.extend_from_slice(&p.payload);
                    if !prepared {
                        // Answered directly with one DATA packet, no PREPARE/ACK around it.
                        return check_len(data.len(), want);
                    }
                }
                CMD_ACK_OK if prepared => return check_len(data.len(), want),
                code => return Err(refusal(CMD_READ_BUFFER, code)),
            }
            let deadline = Instant::now() + self.cfg.timeout;
            p = self.recv_reply(deadline).await?;
        }
    }
}

fn check_len(have: usize, want: usize) -> Result<(), ZkError> {
    if have == want { Ok(()) } else { Err(ZkError::Unexpected(format!("chunk ended after {have} of {want} bytes"))) }
}

/// Over UDP lost and corrupted datagrams look like timeouts or short chunks; asking again is the only remedy.
/// Over TCP a timeout is retried too (the terminal may have been slow); a closed or broken stream is not.
fn is_retryable(e: &ZkError) -> bool {
    matches!(e, ZkError::Timeout(_) | ZkError::Unexpected(_))
}
