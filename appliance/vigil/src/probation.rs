//! The answer a `config/set` is owed at start-up: at once for a change rolled back before this
//! start; after its health window for one on probation (see `vigil_fleet::config_change`).

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vigil_config::Config;
use vigil_core::stats::CameraStats;
use vigil_fleet::{commands, config_change};
use vigil_store::Store;
use vigil_uplink as uplink;

use crate::app::queue_and_flush;

/// The reply a configuration change is owed: at once for one rolled back before this start; for
/// one on probation, after its window, from a task (returned) that accepts it or rolls it back
/// and restarts.
#[allow(clippy::too_many_arguments)]
pub async fn config_change_reply(
    change: config_change::Startup,
    config: &Config,
    store: &Store,
    wake: &Arc<Notify>,
    status: &uplink::SharedStatus,
    cameras: &[Arc<CameraStats>],
    restart: &CancellationToken,
    cancel: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    use config_change::{self as change, Startup};
    let device_id = config.device_id.clone();
    let reply = move |request_id: &str, outcome: Result<serde_json::Value, String>| {
        commands::Reply::new(request_id, outcome).message(&device_id)
    };
    match change {
        Startup::None | Startup::RollBackNow => None,
        Startup::RolledBack { request_id, reason } => {
            let msg = format!("configuration rolled back to the previous one: {reason}");
            let (topic, payload) = reply(&request_id, Err(msg));
            queue_and_flush(store, wake, &topic, &payload, "config/set reply").await;
            None
        }
        Startup::Probation { request_id, window } => {
            tracing::warn!(request_id = %request_id, window_s = window.as_secs(), "new configuration on probation");
            let (store, wake, status, restart, cancel) =
                (store.clone(), wake.clone(), status.clone(), restart.clone(), cancel.clone());
            let cameras = cameras.to_vec();
            let data_dir = config.data_dir.clone();
            Some(tokio::spawn(async move {
                let health = || change::health_problems(status.has_connected(), &cameras);
                match change::probation(window, &cancel, health).await {
                    None => {}
                    Some(change::Verdict::Healthy) => {
                        change::accept(&data_dir);
                        tracing::info!(request_id = %request_id, "new configuration healthy: kept");
                        let value = serde_json::json!({ "applied": true, "health_window_s": window.as_secs() });
                        let (topic, payload) = reply(&request_id, Ok(value));
                        queue_and_flush(&store, &wake, &topic, &payload, "config/set reply").await;
                    }
                    Some(change::Verdict::Unhealthy(reason)) => match change::roll_back(&data_dir, &reason) {
                        Ok(()) => restart.cancel(),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot roll the configuration back; keeping the new one")
                        }
                    },
                }
            }))
        }
    }
}
