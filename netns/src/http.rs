//! One blocking HTTP client (reqwest with rustls) whose sockets live in a namespace.
//!
//! reqwest's blocking client runs its requests on a runtime thread of its own, started when the
//! client is built. [`HttpClient::new`] builds it on a thread that has entered the namespace,
//! so that runtime thread, and every socket it opens, live there; the client itself can then
//! be used from any thread. Dropping the client stops that thread.

use std::sync::Arc;
use std::time::Duration;

use crate::namespace::{enter, Netns, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("HTTP client set-up in {netns}: {reason}")]
    Setup { netns: String, reason: String },
    #[error("{method:?} is not an HTTP method")]
    Method { method: String },
    /// No response: connection refused, a TLS alert, a timeout... `reason` has the whole
    /// chain of causes (a TLS alert's name is at its end).
    #[error("{method} {url} from {netns}: {reason}")]
    Request {
        method: String,
        url: String,
        netns: String,
        reason: String,
    },
}

/// How an [`HttpClient`] connects.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// The client config for `https://` URLs: the CA it trusts and, for mutual TLS, the
    /// certificate it presents. Without it, `https://` trusts the public web roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Keep connections open between requests. Off (the default), every request opens a
    /// connection of its own and closes it after the answer.
    pub keep_alive: bool,
    /// How long a connection may take to open (default: the request's whole time limit).
    pub connect_timeout: Option<Duration>,
}

/// A response: status, headers (names lower-case, in order) and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header with this name (case-insensitive).
    #[cfg(test)]
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A blocking HTTP client in a namespace. No proxy from the environment, no redirects
/// followed (a 3xx is an answer), no compression.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::blocking::Client,
    netns: String,
}

/// An error and all its causes, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = inner.source();
    }
    text
}

impl HttpClient {
    /// A client whose sockets live in the namespace named `netns` (a [`Netns::name`]).
    pub fn new(netns: &str, options: &HttpOptions) -> Result<HttpClient, HttpError> {
        let setup = |reason: String| HttpError::Setup {
            netns: netns.to_string(),
            reason,
        };
        let options = options.clone();
        let client = enter(&Netns::path_of(netns), move || {
            let mut builder = reqwest::blocking::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .tcp_nodelay(true)
                // Header names as curl and most clients write them (`Content-Type`).
                .http1_title_case_headers()
                // Per request (see `request`); none for the client as a whole.
                .timeout(None);
            if let Some(timeout) = options.connect_timeout {
                builder = builder.connect_timeout(timeout);
            }
            if !options.keep_alive {
                builder = builder.pool_max_idle_per_host(0);
            }
            if let Some(tls) = options.tls {
                builder = builder.use_preconfigured_tls(rustls::ClientConfig::clone(&tls));
            }
            builder.build()
        })?
        .map_err(|e| setup(chain(&e)))?;
        Ok(HttpClient {
            client,
            netns: netns.to_string(),
        })
    }

    /// Sends one request to `url` (`http://` or `https://`); `body` is `(content type,
    /// bytes)`. Err only when no response came within `timeout`.
    pub fn request(
        &self,
        method: &str,
        url: &str,
        body: Option<(&str, &[u8])>,
        timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        let verb =
            reqwest::Method::from_bytes(method.as_bytes()).map_err(|_| HttpError::Method {
                method: method.to_string(),
            })?;
        let failed = |e: &dyn std::error::Error| HttpError::Request {
            method: method.to_string(),
            url: url.to_string(),
            netns: self.netns.clone(),
            reason: chain(e),
        };
        let mut request = self.client.request(verb, url).timeout(timeout);
        if let Some((content_type, bytes)) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes.to_vec());
        }
        let response = request.send().map_err(|e| failed(&e))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response.bytes().map_err(|e| failed(&e))?.to_vec();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn errors_carry_their_causes() {
        let e = Outer(std::io::Error::other("received fatal alert: UnknownCA"));
        assert_eq!(chain(&e), "outer: received fatal alert: UnknownCA");
    }

    #[test]
    fn headers_are_found_by_any_case() {
        let r = HttpResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{}".to_vec(),
        };
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.header("x-none"), None);
        assert_eq!(r.text(), "{}");
    }
}
