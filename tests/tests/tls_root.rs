//! Mutual TLS between the orchestrator and the agent, end to end: the real agent in a router
//! namespace, real rustls clients (and curl) in the management namespace, certificates made
//! at test time with akanda-pki (rcgen).
//!
//! - Every wrong client is refused in the TLS handshake (the server's alert, and its log line
//!   "TLS handshake refused"), never by HTTP: no certificate, another CA, an expired
//!   certificate, no clientAuth usage (none at all, or codeSigning only), a server certificate.
//!   Plain HTTP to the TLS port gets no HTTP answer. The right certificate works.
//! - The server certificate and the client CA are rotated without a restart while a PUT is
//!   in flight on a connection opened before both rotations: the PUT completes (200). A
//!   mismatched key is refused and the certificate in force stays. A rotation by SIGHUP in
//!   the middle of a running apply (3,000 floating IPs) does not disturb it.
//! - The boot contract: TLS material from the config drive's user_data (served TLS only, the
//!   files 0600 in the state dir, the key never logged); without it, config changes are
//!   refused unless `meta.akanda_insecure_http` is "true".

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use akanda_pki::{Ca, Usage, Validity};
use akanda_tests::tls::{self, Pki};
use akanda_tests::{require_root, Agent, Http, RouterLab};
use serde_json::{json, Value};

fn wait_tls_ready(agent: &mut Agent, lab: &RouterLab, pki: &Pki) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = agent.try_wait() {
            panic!("agent exited ({status})\n{}", agent.log());
        }
        match tls::request(
            lab.mgmt(),
            lab.listen_addr(),
            pki.client_config(),
            "GET",
            "/v1/base/",
            None,
        ) {
            Ok((200, _)) => return,
            other => assert!(
                Instant::now() < deadline,
                "agent not ready over TLS: {other:?}\n{}",
                agent.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_tls_agent(lab: &RouterLab, pki: &Pki, extra: &[&str]) -> Agent {
    let mut args = pki.server_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::spawn_tls(
        lab.router(),
        lab.listen_addr(),
        Some(lab.state_dir()),
        &args,
    );
    wait_tls_ready(&mut agent, lab, pki);
    agent
}

fn curl(lab: &RouterLab, pki: &Pki) -> Http {
    let [ca, cert, key] = tls::curl_files(pki);
    Http::new(lab.mgmt(), format!("https://{}", lab.listen_addr())).with_tls(&ca, &cert, &key)
}

fn refusals(agent: &Agent) -> usize {
    agent.log().matches("TLS handshake refused").count()
}

#[test]
fn only_the_orchestrators_certificate_passes_the_handshake() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("tlshs");
    let pki = Pki::new(RouterLab::MGMT_ADDR.parse().unwrap());
    let agent = start_tls_agent(&lab, &pki, &[]);
    let addr = lab.listen_addr();
    let ca_pem = pki.ca.cert_pem();

    // The right certificate: every route answers, and GET / says mutual TLS.
    let (status, body) =
        tls::request(lab.mgmt(), addr, pki.client_config(), "GET", "/", None).unwrap();
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["tls"], "mutual-tls", "{doc}");
    assert_eq!(doc["api"]["current"], "v1", "{doc}");
    assert!(
        doc["features"]
            .as_array()
            .unwrap()
            .contains(&json!("mutual-tls")),
        "{doc}"
    );

    let other_ca = Ca::generate("another CA", Validity::days(30)).unwrap().0;
    let past = time::OffsetDateTime::now_utc() - time::Duration::days(20);
    let cases: Vec<(&str, Option<akanda_pki::Issued>, &str)> = vec![
        ("no client certificate", None, "CertificateRequired"),
        (
            "a client certificate from another CA",
            Some(
                other_ca
                    .issue_client("rug-lite", Validity::days(30))
                    .unwrap(),
            ),
            "UnknownCA",
        ),
        (
            "an expired client certificate",
            Some(tls::issue(
                &pki.ca,
                "rug-lite",
                &[Usage::ClientAuth],
                Validity::between(past, past + time::Duration::days(10)),
            )),
            "CertificateExpired",
        ),
        (
            "a certificate without any extended key usage",
            Some(tls::issue(&pki.ca, "no-usage", &[], Validity::days(30))),
            "UnsupportedCertificate",
        ),
        (
            "a certificate with codeSigning only",
            Some(tls::issue(
                &pki.ca,
                "code",
                &[Usage::CodeSigning],
                Validity::days(30),
            )),
            "UnsupportedCertificate",
        ),
        (
            "the appliance's server certificate as a client certificate",
            Some(pki.server.clone()),
            "UnsupportedCertificate",
        ),
    ];
    for (what, cert, alert) in cases {
        let before = refusals(&agent);
        let config = tls::client_config(ca_pem, cert.as_ref());
        let result = tls::request(lab.mgmt(), addr, config, "GET", "/v1/base/", None);
        let err = match result {
            Ok((status, body)) => panic!("{what}: answered HTTP {status}: {body}"),
            Err(e) => e,
        };
        assert!(err.contains(alert), "{what}: expected {alert}, got: {err}");
        // The server refused it in the handshake, and said so.
        let deadline = Instant::now() + Duration::from_secs(5);
        while refusals(&agent) == before {
            assert!(
                Instant::now() < deadline,
                "{what}: no refusal in the log\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{what}: refused: {err}");
    }

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = lab.http().request("GET", "/v1/base/", None);
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");

    // A config change over TLS is logged with who made it and the resulting hash.
    // It carries a VPN pre-shared key: never returned, never logged, stored 0600.
    let https = curl(&lab, &pki);
    let mut config = lab.fitted_config_with(&https);
    let psk = "tls-test-psk-6d1f0b";
    config["vpn"] =
        json!({"ipsec": [{"id": "v1", "ipsec_connections": [{"id": "c1", "psk": psk}]}]});
    let r = https.put_json("/v1/system/config", &config);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains(psk), "{}", r.body);
    let shown = https.get("/v1/system/config");
    assert!(!shown.body.contains(psk), "{}", shown.body);
    assert!(shown.body.contains("***"), "{}", shown.body);
    let saved = akanda_tests::saved_config(lab.state_dir()).unwrap();
    assert!(String::from_utf8_lossy(&saved).contains(psk));
    for (name, mode) in akanda_tests::saved_config_modes(lab.state_dir()) {
        assert_eq!(mode, 0o600, "{name}");
    }
    let hash = https.get("/v1/status").json()["config_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("config changed"))
        .unwrap_or_else(|| panic!("no config change logged\n{log}"));
    assert!(line.contains("CN=rug-lite"), "{line}");
    assert!(line.contains(&hash), "{line}");
    // No key material and no pre-shared key in the log, ever.
    assert!(!log.contains("PRIVATE KEY"), "{log}");
    assert!(!log.contains(psk), "{log}");
}

#[test]
fn certificate_and_client_ca_rotate_without_restart_during_a_put() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("tlsrot");
    let pki = Pki::new(RouterLab::MGMT_ADDR.parse().unwrap());
    let mut agent = start_tls_agent(&lab, &pki, &[]);
    let pid = agent.pid();
    let addr = lab.listen_addr();
    let config = lab.fitted_config_with(&curl(&lab, &pki)).to_string();
    let first_cert = tls::pem_sha256(&pki.server.cert_pem);

    // A PUT in flight: the head and half the body are sent on a connection made before the
    // rotations; the rest follows after both.
    let mut inflight = tls::connect(lab.mgmt(), addr, pki.client_config()).unwrap();
    assert_eq!(tls::server_cert_sha256(&inflight), first_cert);
    let half = config.len() / 2;
    inflight
        .write_all(tls::request_head("PUT", "/v1/system/config", Some(config.len())).as_bytes())
        .unwrap();
    inflight.write_all(&config.as_bytes()[..half]).unwrap();
    inflight.flush().unwrap();

    // 1. A new server certificate: new connections get it, without a restart.
    let rotated = tls::issue_server(&pki.ca, pki.server_ip);
    pki.write_server(&rotated);
    let new_cert = tls::pem_sha256(&rotated.cert_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = tls::connect(lab.mgmt(), addr, pki.client_config()).unwrap();
        if tls::server_cert_sha256(&s) == new_cert {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rotated certificate not served\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // 2. A new client CA: the orchestrator's new certificate works, the old one is refused.
    let (ca2, _) = Ca::generate("akanda test CA 2", Validity::days(30)).unwrap();
    let client2 = ca2.issue_client("rug-lite-2", Validity::days(30)).unwrap();
    pki.write_ca(ca2.cert_pem());
    let new_client = tls::client_config(pki.ca.cert_pem(), Some(&client2));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = tls::request(lab.mgmt(), addr, new_client.clone(), "GET", "/", None);
        if matches!(r, Ok((200, _))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new client CA not in force: {r:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let old = tls::request(lab.mgmt(), addr, pki.client_config(), "GET", "/", None);
    assert!(
        old.as_ref().is_err_and(|e| e.contains("UnknownCA")),
        "the old client CA still works: {old:?}"
    );

    // 3. Material that does not load (a certificate with another key) is refused, and the
    //    certificate in force stays.
    let other = tls::issue_server(&pki.ca, pki.server_ip);
    std::fs::write(pki.path("server.key"), &other.key_pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("TLS material not reloaded") {
        assert!(
            Instant::now() < deadline,
            "a mismatched key was not noticed\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = tls::connect(lab.mgmt(), addr, new_client.clone()).unwrap();
    assert_eq!(tls::server_cert_sha256(&s), new_cert);
    pki.write_server(&rotated);

    // 4. SIGHUP re-reads on demand.
    // SAFETY: a plain signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("SIGHUP: re-reading the TLS material") {
        assert!(Instant::now() < deadline, "SIGHUP ignored\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // The PUT started before all this completes on its connection.
    inflight.write_all(&config.as_bytes()[half..]).unwrap();
    inflight.flush().unwrap();
    let (status, body) = tls::read_response(&mut inflight).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(agent.try_wait().is_none(), "the agent restarted or died");
    assert_eq!(agent.pid(), pid);
    let (status, body) = tls::request(
        lab.mgmt(),
        addr,
        new_client.clone(),
        "GET",
        "/v1/status",
        None,
    )
    .unwrap();
    assert_eq!(status, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["applies"]["ok"], 1, "{status}");

    // 5. A rotation while an apply is running (3,000 floating IPs): the apply completes on
    //    its connection, and the log shows the reload between its start and its end.
    let fitted: Value = serde_json::from_str(&config).unwrap();
    let mut heavy = akanda_tests::config_with_floating_ips(3000);
    for i in 0..3 {
        heavy["networks"][i]["interface"]["ifname"] =
            fitted["networks"][i]["interface"]["ifname"].clone();
    }
    let heavy = heavy.to_string();
    let count = |what: &str| agent.log().matches(what).count();
    let (requested, reloaded) = (
        count("config change requested"),
        count("TLS material reloaded"),
    );
    let third = tls::issue_server(&pki.ca, pki.server_ip);
    let (status, body) = std::thread::scope(|s| {
        let put = s.spawn(|| {
            tls::request(
                lab.mgmt(),
                addr,
                new_client.clone(),
                "PUT",
                "/v1/system/config",
                Some(heavy.as_bytes()),
            )
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while count("config change requested") == requested {
            assert!(
                Instant::now() < deadline,
                "the PUT never started\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        pki.write_server(&third);
        // SAFETY: a plain signal to our own child.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
        put.join().unwrap().unwrap()
    });
    assert_eq!(status, 200, "{body}");
    let log = agent.log();
    let line_of = |what: &str, nth: usize| {
        log.lines()
            .enumerate()
            .filter(|(_, l)| l.contains(what))
            .nth(nth)
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("no {what:?} #{nth}\n{log}"))
    };
    let start = line_of("config change requested", requested);
    let reload = line_of("TLS material reloaded", reloaded);
    let end = line_of("config changed", requested);
    assert!(
        start < reload && reload < end,
        "the reload (line {reload}) did not happen during the apply (lines {start}..{end})\n{log}"
    );
    let s = tls::connect(lab.mgmt(), addr, new_client.clone()).unwrap();
    assert_eq!(
        tls::server_cert_sha256(&s),
        tls::pem_sha256(&third.cert_pem)
    );
    let applied = log.lines().nth(end - 1).unwrap_or("");
    eprintln!("apply during the rotation: {applied}");

    // 6. Through the API (PUT /v1/system/tls, as an orchestrator rotates before expiry): a
    //    certificate with another key, and an expired certificate, are refused naming the
    //    field and change nothing; the right material is served to new connections.
    let put_tls = |body: Value| {
        tls::request(
            lab.mgmt(),
            addr,
            new_client.clone(),
            "PUT",
            "/v1/system/tls",
            Some(body.to_string().as_bytes()),
        )
        .unwrap()
    };
    let served =
        || tls::server_cert_sha256(&tls::connect(lab.mgmt(), addr, new_client.clone()).unwrap());
    let fourth = tls::issue_server(&pki.ca, pki.server_ip);
    let (status, body) =
        put_tls(json!({"server_cert": fourth.cert_pem, "server_key": other.key_pem}));
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("\"path\":\"server_key\""), "{body}");
    let past = time::OffsetDateTime::now_utc() - time::Duration::days(20);
    let expired = pki
        .ca
        .issue_server(
            "expired",
            &[akanda_pki::San::Ip(pki.server_ip)],
            Validity::between(past, past + time::Duration::days(10)),
        )
        .unwrap();
    let (status, body) =
        put_tls(json!({"server_cert": expired.cert_pem, "server_key": expired.key_pem}));
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("\"path\":\"server_cert\""), "{body}");
    assert_eq!(served(), tls::pem_sha256(&third.cert_pem));
    let (status, body) =
        put_tls(json!({"server_cert": fourth.cert_pem, "server_key": fourth.key_pem}));
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("PRIVATE KEY"), "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer["server_cert"]["sha256"],
        tls::pem_sha256(&fourth.cert_pem)
    );
    assert_eq!(served(), tls::pem_sha256(&fourth.cert_pem));
    // Written 0600 where the agent reads it from.
    let mode = std::fs::metadata(pki.path("server.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::read_to_string(pki.path("server.pem")).unwrap(),
        fourth.cert_pem
    );
    assert!(!agent.log().contains("PRIVATE KEY"));
}

/// An extracted config drive in a directory, with `user_data`.
fn config_drive(lab: &RouterLab, meta: Value, user_data: Option<Value>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let latest = dir.path().join("openstack/latest");
    std::fs::create_dir_all(&latest).unwrap();
    let mac = RouterLab::ROUTER_MACS[0];
    let nd = json!({
        "links": [{"id": "tap0", "type": "tap", "ethernet_mac_address": mac, "mtu": 1500}],
        "networks": [{"id": "network0", "link": "tap0", "type": "ipv6",
                      "ip_address": RouterLab::MGMT_ADDR, "netmask": "ffff:ffff:ffff:ffff::",
                      "routes": [], "network_id": "43dc2fad-f6f9-4668-9695-fed50f7768aa"}]
    });
    let mut meta_map = json!({"akanda_mgmt_mac": mac, "akanda_api_port": lab.port().to_string()});
    for (k, v) in meta.as_object().unwrap() {
        meta_map[k] = v.clone();
    }
    std::fs::write(latest.join("network_data.json"), nd.to_string()).unwrap();
    std::fs::write(
        latest.join("meta_data.json"),
        json!({"uuid": "u", "meta": meta_map}).to_string(),
    )
    .unwrap();
    if let Some(ud) = user_data {
        std::fs::write(latest.join("user_data"), ud.to_string()).unwrap();
    }
    dir
}

fn boot_agent(lab: &RouterLab, drive: &std::path::Path) -> Agent {
    // No --insecure-http, no --tls-*: the config drive decides.
    let drive = drive.display().to_string();
    Agent::spawn_tls(
        lab.router(),
        lab.listen_addr(),
        Some(lab.state_dir()),
        &["--boot-config", &drive],
    )
}

fn wait_plain(agent: &mut Agent, http: &Http) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(s) = agent.try_wait() {
            panic!("agent exited ({s})\n{}", agent.log());
        }
        if let Ok(r) = http.request("GET", "/", None) {
            if r.status == 200 {
                return r.json();
            }
        }
        assert!(
            Instant::now() < deadline,
            "agent not ready\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn boot_config_tls_material_and_the_plain_http_opt_in() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("tlsboot");
    let pki = Pki::new(RouterLab::MGMT_ADDR.parse().unwrap());
    let router_id = "81a51c84-25a3-4180-8e1c-4d10e1aaebd3";

    // 1. rug-lite's user_data with TLS material: TLS only.
    let ud = json!({"akanda": {"version": 1, "router_id": router_id,
        "management_address": RouterLab::MGMT_ADDR,
        "tls": {"ca_cert": pki.ca.cert_pem(), "server_cert": pki.server.cert_pem,
                "server_key": pki.server.key_pem}}});
    let drive = config_drive(&lab, json!({}), Some(ud));
    let mut agent = boot_agent(&lab, drive.path());
    wait_tls_ready(&mut agent, &lab, &pki);
    let https = curl(&lab, &pki);
    assert_eq!(https.get("/").json()["tls"], "mutual-tls");
    assert!(lab.http().request("GET", "/v1/base/", None).is_err());
    let r = https.put_json("/v1/system/config", &lab.fitted_config_with(&https));
    assert_eq!(r.status, 200, "{}", r.body);
    for f in ["server.pem", "server.key", "client-ca.pem"] {
        let p = lab.state_dir().join("tls").join(f);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
    let key_line = pki.server.key_pem.lines().nth(1).unwrap();
    assert!(!agent.log().contains(key_line), "the key is in the log");
    assert!(!agent.log().contains("PRIVATE KEY"));
    agent.stop();

    // 2. tls null, no opt-in: the agent answers, but refuses to show or change the config.
    let ud = json!({"akanda": {"version": 1, "router_id": router_id,
        "management_address": RouterLab::MGMT_ADDR, "tls": null}});
    let drive = config_drive(&lab, json!({}), Some(ud.clone()));
    let mut agent = boot_agent(&lab, drive.path());
    let http = lab.http();
    let doc = wait_plain(&mut agent, &http);
    assert_eq!(doc["tls"], "plain-http-read-only", "{doc}");
    let config = lab.fitted_config();
    let r = http.put_json("/v1/system/config", &config);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["details"][0]["path"], "meta.akanda_insecure_http");
    assert_eq!(http.get("/v1/system/config").status, 403);
    agent.stop();

    // 3. The operator's explicit opt-in in the server's metadata: plain HTTP, with a warning.
    let drive = config_drive(&lab, json!({"akanda_insecure_http": "true"}), Some(ud));
    let mut agent = boot_agent(&lab, drive.path());
    let doc = wait_plain(&mut agent, &http);
    assert_eq!(doc["tls"], "plain-http", "{doc}");
    let r = http.put_json("/v1/system/config", &config);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        agent.log().contains("serving PLAIN HTTP"),
        "{}",
        agent.log()
    );
    agent.stop();

    // 4. A broken TLS document is fatal, naming the field.
    let ud = json!({"akanda": {"version": 1, "tls": {"ca_cert": pki.ca.cert_pem(),
        "server_cert": pki.server.cert_pem}}});
    let drive = config_drive(&lab, json!({}), Some(ud));
    let mut agent = boot_agent(&lab, drive.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = agent.try_wait() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "agent kept running\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    assert!(
        agent.log().contains("akanda.tls.server_key: missing"),
        "{}",
        agent.log()
    );
}

#[test]
fn plain_http_needs_the_explicit_flag() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("tlsflag");
    let addr: SocketAddr = lab.listen_addr();
    let mut agent = Agent::spawn_tls(lab.router(), addr, Some(lab.state_dir()), &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = agent.try_wait() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "agent kept running\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    assert!(agent.log().contains("--insecure-http"), "{}", agent.log());
    // With the flag: served, and the warning is logged at start.
    let agent = lab.start_agent();
    assert!(
        agent.log().contains("serving PLAIN HTTP"),
        "{}",
        agent.log()
    );
    assert_eq!(lab.http().get("/").json()["tls"], "plain-http");
    // No TLS material to replace over plain HTTP.
    let r = lab.http().put_json(
        "/v1/system/tls",
        &json!({"server_cert": "x", "server_key": "y"}),
    );
    assert_eq!(r.status, 403, "{}", r.body);
}
