//! A bounded load against one node: a few workers send requests with unique ids over a fixed
//! set of keys, each with a deadline (`X-Request-Timeout`) and a client timeout above it, until
//! told to stop, a duration passes, or a number of requests went out, whichever comes first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;

use crate::common::Http;

/// One request and what came of it.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    pub key: usize,
    pub sent: Instant,
    pub done: Instant,
    /// The status, or `None` when no answer came (the client timed out or the connection
    /// failed; `error` says which).
    pub status: Option<u16>,
    /// Executions of this request the handler had counted when it answered.
    pub count: Option<u64>,
    pub error: Option<String>,
}

impl Record {
    pub fn ok(&self) -> bool {
        self.status == Some(200)
    }

    pub fn took(&self) -> Duration {
        self.done - self.sent
    }

    pub fn describe(&self) -> String {
        format!(
            "{} key k{} status {:?} after {:?}: {}",
            self.id,
            self.key,
            self.status,
            self.took(),
            self.error.as_deref().unwrap_or("")
        )
    }
}

pub struct LoadConfig {
    /// `http://ip:port` of the node the load goes to.
    pub endpoint: String,
    pub keys: usize,
    pub workers: usize,
    pub deadline: Duration,
    /// How long the handler works on each request.
    pub work_ms: u64,
    pub max_requests: u64,
    pub max_duration: Duration,
    /// Prefix of the request ids, unique per load.
    pub tag: String,
}

/// A running load. Its records grow as answers come.
pub struct Load {
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<Record>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

pub fn key_name(key: usize) -> String {
    format!("k{key}")
}

impl Load {
    pub fn start(config: LoadConfig) -> Load {
        let config = Arc::new(config);
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut http = Http::default();
        http.timeout = config.deadline + Duration::from_secs(3);
        let workers = (0..config.workers)
            .map(|_| {
                let (config, stop, records, next, http) = (
                    config.clone(),
                    stop.clone(),
                    records.clone(),
                    next.clone(),
                    http.clone(),
                );
                tokio::spawn(async move {
                    let deadline_ms = config.deadline.as_millis().to_string();
                    while !stop.load(Ordering::SeqCst) && started.elapsed() < config.max_duration {
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        if n >= config.max_requests {
                            break;
                        }
                        let key = (n as usize) % config.keys;
                        let id = format!("{}-{n}", config.tag);
                        let url = format!("{}/api/count/{}", config.endpoint, key_name(key));
                        let body = format!(r#"{{"id":"{id}","sleep_ms":{}}}"#, config.work_ms);
                        let sent = Instant::now();
                        let answer = http
                            .request(
                                Method::POST,
                                &url,
                                &[
                                    ("content-type", "application/json"),
                                    ("x-request-timeout", &deadline_ms),
                                ],
                                body,
                            )
                            .await;
                        let done = Instant::now();
                        let record = match answer {
                            Ok(answer) => {
                                let json: Option<serde_json::Value> =
                                    serde_json::from_slice(&answer.body).ok();
                                Record {
                                    id,
                                    key,
                                    sent,
                                    done,
                                    status: Some(answer.status.as_u16()),
                                    count: json.as_ref().and_then(|j| j["count"].as_u64()),
                                    error: (!answer.status.is_success()).then(|| {
                                        String::from_utf8_lossy(&answer.body).into_owned()
                                    }),
                                }
                            }
                            Err(e) => Record {
                                id,
                                key,
                                sent,
                                done,
                                status: None,
                                count: None,
                                error: Some(e),
                            },
                        };
                        records.lock().unwrap().push(record);
                    }
                })
            })
            .collect();
        Load {
            stop,
            records,
            workers,
        }
    }

    /// The records so far.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// Successful answers so far.
    pub fn successes(&self) -> usize {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.ok())
            .count()
    }

    /// Whether every key has answered 200 to a request sent at or after `since`.
    pub fn every_key_answered_since(&self, since: Instant, keys: usize) -> bool {
        let records = self.records.lock().unwrap();
        let mut seen = vec![false; keys];
        for r in records.iter().filter(|r| r.ok() && r.sent >= since) {
            seen[r.key] = true;
        }
        seen.iter().all(|s| *s)
    }

    /// Stops the workers (each finishes its request in flight) and returns every record.
    pub async fn stop(self) -> Vec<Record> {
        self.stop.store(true, Ordering::SeqCst);
        for worker in self.workers {
            worker.await.expect("load worker");
        }
        let records = self.records.lock().unwrap();
        records.clone()
    }
}

/// For each key, when it first answered 200 to a request sent at or after `since`; the latest
/// of those, after `since`. `None` when some key never did.
pub fn every_key_answered_after(
    records: &[Record],
    since: Instant,
    keys: usize,
) -> Option<Duration> {
    let mut first: HashMap<usize, Instant> = HashMap::new();
    for r in records.iter().filter(|r| r.ok() && r.sent >= since) {
        let entry = first.entry(r.key).or_insert(r.done);
        if r.done < *entry {
            *entry = r.done;
        }
    }
    if first.len() < keys {
        return None;
    }
    first
        .values()
        .max()
        .map(|t| t.saturating_duration_since(since))
}

/// Latency percentile `p` (0-100) of the records.
pub fn percentile(records: &[Record], p: f64) -> Duration {
    let mut took: Vec<Duration> = records.iter().map(Record::took).collect();
    if took.is_empty() {
        return Duration::ZERO;
    }
    took.sort();
    let index = ((p / 100.0) * (took.len() - 1) as f64).round() as usize;
    took[index.min(took.len() - 1)]
}

pub fn failures(records: &[Record]) -> Vec<&Record> {
    records.iter().filter(|r| !r.ok()).collect()
}
