//! What the benchmarks (`tests/benches/*.rs`) share: a keep-alive client for the agent,
//! percentiles, and their environment knobs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use akanda_netns::{HttpClient, HttpOptions};
use serde_json::Value;

use crate::Netns;

/// A client for the agent at `base_url` whose sockets live in a namespace (the harness's
/// HTTP client, reqwest): one kept-alive connection, or a new one per request.
pub struct AgentClient {
    client: HttpClient,
    base: String,
}

/// How an [`AgentClient`] uses connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// One connection, kept alive between requests.
    KeepAlive,
    /// A new connection (and TLS handshake) for every request.
    OnePerRequest,
}

impl AgentClient {
    /// A client for `base_url`; `tls` for `https://` (mutual TLS with a client certificate).
    pub fn new(
        ns: &Netns,
        base_url: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        connections: Connections,
    ) -> AgentClient {
        let options = HttpOptions {
            tls,
            keep_alive: connections == Connections::KeepAlive,
            ..Default::default()
        };
        AgentClient {
            client: HttpClient::new(ns.name(), &options).unwrap_or_else(|e| panic!("{e}")),
            base: base_url.trim_end_matches('/').to_string(),
        }
    }

    /// One request with a JSON body (none when empty): status and body.
    pub(crate) fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let body = (!body.is_empty()).then_some(("application/json", body));
        let url = format!("{}{path}", self.base);
        let r = self
            .client
            .request(method, &url, body, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}"));
        (r.status, r.body)
    }

    /// How long a request took to answer 200 (panics on another status).
    pub fn timed(&self, method: &str, path: &str, body: &[u8]) -> Duration {
        let t = Instant::now();
        let (status, resp) = self.request(method, path, body);
        let elapsed = t.elapsed();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
        elapsed
    }

    /// `PUT /v1/system/config`: how long until the 200.
    pub fn put(&self, config: &Value) -> Duration {
        let body = serde_json::to_vec(config).expect("JSON serialises");
        self.timed("PUT", "/v1/system/config", &body)
    }

    /// `last_apply` of `GET /v1/status`.
    pub fn last_apply(&self) -> Value {
        let (_, body) = self.request("GET", "/v1/status", b"");
        let v: Value = serde_json::from_slice(&body).expect("status is JSON");
        v["last_apply"].clone()
    }
}

/// The `p` quantile (0 to 1, nearest rank) of `samples`, in milliseconds.
pub fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.partial_cmp(b).expect("durations compare"));
    ms[((ms.len() - 1) as f64 * p).round() as usize]
}

/// A number from the environment variable `var`, else `default`.
pub fn env_number<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let s: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&s, 0.0), 1.0);
        assert_eq!(percentile_ms(&s, 0.5), 6.0);
        assert_eq!(percentile_ms(&s, 1.0), 10.0);
        assert_eq!(env_number("AKANDA_TEST_NO_SUCH_VARIABLE", 7u32), 7);
    }
}
