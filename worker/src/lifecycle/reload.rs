//! Following the agent registry while the worker runs.
//!
//! A change of the registry (`PUT` or `DELETE /v1/agents/{name}`) is notified on
//! `agents_changed` in its transaction. The worker then reads the registry again and
//! probes its agents as at start ([`discover`]), narrowed by `--agents`, and if what it
//! can run changed (an agent added or removed, a config changed) it:
//! - runs the new set: a turn that starts from now on uses the new backend, a turn
//!   already running keeps the one it started with;
//! - consumes the (queue, agent) pairs of the agents that passed their probe, and
//!   retires the consumers of the others (they take no new job; what they fetched and
//!   did not start goes back to its queue);
//! - records the agents it runs in the worker registry.
//!
//! A notification sent while the listener was away is covered by reading the registry
//! again at every reconnection. An agent added this way is polled (`--poll-interval`)
//! rather than woken by the dispatcher's publish, until the worker restarts.

use std::{collections::BTreeMap, sync::Arc};

use sea_orm::{DatabaseConnection, sqlx::PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use turnq_core::{
    WorkerId,
    agent::{CHANNEL_AGENTS_CHANGED, config_hash},
    error::chain as error_chain,
    listen::{Listener, Notice},
    worker::WorkerRegistry,
};

use crate::{
    backend::{Backends, discover},
    delivery::{Deliveries, Delivery},
    turn::Runner,
};

/// The wait before reading a registry that could not be read again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// What following the registry needs.
pub(super) struct Reload {
    pub(super) db: DatabaseConnection,
    pub(super) worker: WorkerId,
    pub(super) queues: Vec<String>,
    /// The host the worker registered under: it also takes the tasks pinned to it.
    pub(super) host: String,
    /// `--agents` (empty: every agent the worker can run).
    pub(super) only: Vec<String>,
    pub(super) runner: Arc<Runner>,
    pub(super) deliveries: Deliveries,
}

/// An agent set by name, with each agent's config fingerprint.
fn fingerprint(backends: &Backends) -> BTreeMap<String, String> {
    backends
        .names()
        .filter_map(|name| backends.agent(name))
        .map(|entry| (entry.agent.name.clone(), config_hash(&entry.agent)))
        .collect()
}

impl Reload {
    /// Reloads on every change of the registry (and every reconnection of the
    /// listener after the first), until `stop`.
    pub(super) async fn run(self, pool: PgPool, stop: CancellationToken) {
        let changed = Arc::new(Notify::new());
        let listening = {
            let changed = changed.clone();
            let stop = stop.clone();
            async move {
                // Every connection too, the first included: a change made between the
                // start's reading of the registry and this LISTEN is caught then (a
                // reload that finds nothing changed does nothing).
                Listener {
                    what: "the agent registry listener",
                    meanwhile: "registry changes are read at its reconnection",
                }
                .run(&pool, &[CHANNEL_AGENTS_CHANGED], &stop, |_: Notice<'_>| {
                    changed.notify_one();
                })
                .await;
            }
        };
        let reloading = async {
            loop {
                tokio::select! {
                    _ = changed.notified() => {}
                    _ = stop.cancelled() => return,
                }
                // A registry that cannot be read now is read again shortly.
                while !self.reload().await {
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        };
        tokio::join!(listening, reloading);
    }

    /// Reads and probes the registry's agents, and runs them if they changed; false
    /// when the registry could not be read (then it is tried again).
    async fn reload(&self) -> bool {
        let mut fresh = match discover::discover(&self.db, &self.only).await {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::warn!(worker_id = %self.worker, error = %error_chain(&e),
                    "could not read the agent registry after it changed; running the agents as they were, and trying again");
                return false;
            }
        };
        if !self.only.is_empty() {
            fresh.retain(|name| self.only.iter().any(|a| a == name));
        }
        let (before, after) = (fingerprint(&self.runner.backends()), fingerprint(&fresh));
        if before == after {
            return true;
        }
        let changed: Vec<&String> = after
            .iter()
            .filter(|(name, hash)| before.get(*name).is_some_and(|h| h != *hash))
            .map(|(name, _)| name)
            .collect();
        let wanted = Delivery::pairs(&self.queues, &fresh.names().collect::<Vec<_>>(), &self.host);
        let agents = fresh.worker_agents();
        // The new set first: a job of a pair retired below that is already past its
        // consumer finds its agent gone and hands its task back.
        self.runner.set_backends(fresh);
        let (added, retired) = self.deliveries.set(wanted);
        tracing::info!(worker_id = %self.worker,
            added = ?added.iter().map(ToString::to_string).collect::<Vec<_>>(),
            retired = ?retired.iter().map(ToString::to_string).collect::<Vec<_>>(),
            changed = ?changed,
            "the agent registry changed: running its agents as they are now");
        if let Err(e) = WorkerRegistry::set_agents(&self.db, &self.worker, &agents).await {
            tracing::warn!(worker_id = %self.worker, error = %error_chain(&e),
                "could not record the agents this worker runs now in the worker registry");
        }
        true
    }
}
