//! The agent's API as rug-lite calls it (Astara v1 paths). Plain HTTP only for now
//! (`[tls] insecure_http`): the agent has no TLS yet; mutual TLS is the next step, with the
//! identity check (router id and management address in the server certificate).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use akanda_model::Document;
use serde_json::Value;

use crate::cloud::{ApplianceError, ApplianceTarget};

pub(crate) struct AgentClient {
    http: reqwest::Client,
}

impl AgentClient {
    pub(crate) fn plain_http(timeout: Duration) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            // The management network is reached directly, never through a proxy (Astara set
            // trust_env=False for the same reason).
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(AgentClient { http })
    }

    fn url(target: &ApplianceTarget, path: &str) -> String {
        // SocketAddr brackets IPv6 addresses.
        format!(
            "http://{}{path}",
            SocketAddr::new(target.address, target.port)
        )
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Value), ApplianceError> {
        let response = request
            .send()
            .await
            .map_err(|e| ApplianceError::Unreachable(chain(&e)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| ApplianceError::Unreachable(chain(&e)))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    fn refused(status: reqwest::StatusCode, body: &Value) -> ApplianceError {
        // The agent's errors: {"error": summary, "details": [{"path", "reason"}]}.
        let mut why = format!("{status}: {}", body["error"].as_str().unwrap_or("error"));
        for d in body["details"].as_array().into_iter().flatten().take(10) {
            why.push_str(&format!(
                "; {}: {}",
                d["path"].as_str().unwrap_or(""),
                d["reason"].as_str().unwrap_or("")
            ));
        }
        ApplianceError::Refused(why)
    }

    /// `GET /v1/system/interfaces`: MAC → geN.
    pub(crate) async fn interfaces(
        &self,
        target: &ApplianceTarget,
    ) -> Result<BTreeMap<String, String>, ApplianceError> {
        let (status, body) = self
            .send(self.http.get(Self::url(target, "/v1/system/interfaces")))
            .await?;
        if !status.is_success() {
            return Err(Self::refused(status, &body));
        }
        let mut out = BTreeMap::new();
        for i in body["interfaces"].as_array().into_iter().flatten() {
            if let (Some(mac), Some(name)) = (i["lladdr"].as_str(), i["ifname"].as_str()) {
                out.insert(mac.to_ascii_lowercase(), name.to_string());
            }
        }
        Ok(out)
    }

    /// `GET /v1/status` `config_hash`.
    pub(crate) async fn config_hash(
        &self,
        target: &ApplianceTarget,
    ) -> Result<Option<String>, ApplianceError> {
        let (status, body) = self
            .send(self.http.get(Self::url(target, "/v1/status")))
            .await?;
        if !status.is_success() {
            return Err(Self::refused(status, &body));
        }
        Ok(body["config_hash"].as_str().map(str::to_string))
    }

    /// `PUT /v1/system/config`.
    pub(crate) async fn put_config(
        &self,
        target: &ApplianceTarget,
        document: &Document,
    ) -> Result<(), ApplianceError> {
        let request = self
            .http
            .put(Self::url(target, "/v1/system/config"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(document.to_canonical_json());
        let (status, body) = self.send(request).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(Self::refused(status, &body))
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use warp::Filter;

    /// A test stand-in for the agent's HTTP API: answers like akanda-agent (docs/agent-api.md)
    /// and validates PUT bodies with the model, as the agent does.
    async fn stand_in_agent() -> (SocketAddr, Arc<Mutex<Option<String>>>) {
        let held: Arc<Mutex<Option<String>>> = Arc::default();
        let held_get = Arc::clone(&held);
        let held_put = Arc::clone(&held);
        let interfaces = warp::path!("v1" / "system" / "interfaces").map(|| {
            warp::reply::json(&serde_json::json!({"interfaces": [
                {"ifname": "ge0", "lladdr": "FA:16:3E:DE:EE:03", "addresses": [], "mtu": 1450,
                 "state": "up", "description": "", "groups": [], "media": null},
                {"ifname": "ge1", "lladdr": "fa:16:3e:de:21:ce", "addresses": [], "mtu": 1500,
                 "state": "up", "description": "", "groups": [], "media": null}]}))
        });
        let status = warp::path!("v1" / "status").map(move || {
            warp::reply::json(&serde_json::json!({"agent": "akanda-agent",
                "config_hash": *held_get.lock().unwrap()}))
        });
        let put = warp::path!("v1" / "system" / "config")
            .and(warp::put())
            .and(warp::header::exact("content-type", "application/json"))
            .and(warp::body::bytes())
            .map(move |body: bytes::Bytes| match akanda_model::parse(&body) {
                Ok(c) => {
                    *held_put.lock().unwrap() = Some(c.document.hash());
                    warp::reply::with_status(
                        warp::reply::json(&serde_json::json!({"configuration": {}})),
                        warp::http::StatusCode::OK,
                    )
                }
                Err(e) => warp::reply::with_status(
                    warp::reply::json(&serde_json::json!({"error": "invalid config",
                        "details": [{"path": "networks", "reason": e.to_string()}]})),
                    warp::http::StatusCode::UNPROCESSABLE_ENTITY,
                ),
            });
        let routes = interfaces.or(status).or(put);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service =
                    hyper_util::service::TowerToHyperService::new(warp::service(routes.clone()));
                tokio::spawn(async move {
                    let conn = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let _ = conn
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, held)
    }

    #[tokio::test]
    async fn interfaces_status_and_push_against_an_agent_stand_in() {
        let (addr, held) = stand_in_agent().await;
        let client = AgentClient::plain_http(Duration::from_secs(5)).unwrap();
        let target = ApplianceTarget {
            router_id: "r1".into(),
            address: addr.ip(),
            port: addr.port(),
        };
        let nics = client.interfaces(&target).await.unwrap();
        assert_eq!(nics["fa:16:3e:de:ee:03"], "ge0");
        assert_eq!(nics["fa:16:3e:de:21:ce"], "ge1");
        assert_eq!(client.config_hash(&target).await.unwrap(), None);

        let doc: Document = serde_json::from_slice(
            &std::fs::read(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/astara-router-basic.json"),
            )
            .unwrap(),
        )
        .unwrap();
        client.put_config(&target, &doc).await.unwrap();
        let hash = client.config_hash(&target).await.unwrap().unwrap();
        assert_eq!(Some(hash.clone()), *held.lock().unwrap());
        assert_eq!(hash, crate::builder::agent_hash(&doc).unwrap());

        let err = client
            .put_config(&target, &Document::default())
            .await
            .unwrap_err();
        match err {
            ApplianceError::Refused(why) => {
                assert!(why.starts_with("422"), "{why}");
                assert!(why.contains("tenant_id"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let client = AgentClient::plain_http(Duration::from_secs(2)).unwrap();
        let target = ApplianceTarget {
            router_id: "r1".into(),
            address: "127.0.0.1".parse().unwrap(),
            port: 9,
        };
        assert!(matches!(
            client.interfaces(&target).await,
            Err(ApplianceError::Unreachable(_))
        ));
    }
}
