//! Single-flight for small fetches (manifests, tag re-checks): the first
//! caller starts the work as a spawned task, later callers with the same key
//! await the same result. Spawned, so the work completes (and is cached) even
//! if every caller disconnects.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

type Flight<T> = Shared<BoxFuture<'static, Option<T>>>;

/// std `Mutex`: held for one map operation on the miss path, never across `.await`.
pub struct Flights<K, T: Clone> {
    inflight: Mutex<HashMap<K, Flight<T>>>,
}

impl<K, T: Clone> Default for Flights<K, T> {
    fn default() -> Self {
        Flights { inflight: Mutex::default() }
    }
}

impl<K, T> Flights<K, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// Runs `work` for `key` unless it is already running; returns its result
    /// and whether this caller started it. `None` if the task panicked.
    pub async fn run<F>(self: &Arc<Self>, key: K, work: impl FnOnce() -> F) -> (Option<T>, bool)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let (flight, leader) = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(&key) {
                Some(f) => (f.clone(), false),
                None => {
                    let (this, k, fut) = (self.clone(), key.clone(), work());
                    let task = tokio::spawn(async move {
                        let out = fut.await;
                        this.remove(&k);
                        out
                    });
                    let (this, k) = (self.clone(), key.clone());
                    let f = task
                        .map(move |joined| {
                            // A panicked task never reached its own removal.
                            if joined.is_err() {
                                this.remove(&k);
                            }
                            joined.ok()
                        })
                        .boxed()
                        .shared();
                    inflight.insert(key, f.clone());
                    (f, true)
                }
            }
        };
        (flight.await, leader)
    }

    fn remove(&self, key: &K) {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}
