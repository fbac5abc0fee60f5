//! Single flight: concurrent syncs of one device share one device read. The read runs in its own task, so a
//! caller that gives up does not cancel it for the others.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use uuid::Uuid;

use super::{CallError, CallResult};

type Flight = Shared<BoxFuture<'static, Result<CallResult, CallError>>>;

/// In-flight syncs by device.
#[derive(Default, Clone)]
pub struct SyncFlights {
    flights: Arc<Mutex<HashMap<Uuid, Flight>>>,
}

impl SyncFlights {
    /// Joins the sync of `device` in flight, or starts `start()` as the one.
    pub async fn run<F>(&self, device: Uuid, start: impl FnOnce() -> F) -> Result<CallResult, CallError>
    where
        F: Future<Output = Result<CallResult, CallError>> + Send + 'static,
    {
        let flight = {
            let mut map = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(&device) {
                Some(f) => f.clone(),
                None => {
                    let task = tokio::spawn(start());
                    let map_ref = self.flights.clone();
                    let f: Flight = async move {
                        let out = match task.await {
                            Ok(r) => r,
                            Err(_) => Err(CallError::AgentGone),
                        };
                        map_ref.lock().unwrap_or_else(|e| e.into_inner()).remove(&device);
                        out
                    }
                    .boxed()
                    .shared();
                    map.insert(device, f.clone());
                    // Drive it even if every caller goes away.
                    tokio::spawn(f.clone());
                    f
                }
            }
        };
        flight.await
    }
}
