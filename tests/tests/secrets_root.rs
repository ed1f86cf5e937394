//! Secrets over the live API (issue 12): `/v1/status`'s `config_hash` cannot confirm a guessed
//! pre-shared key, and a GET sent back as a PUT (the key replaced by the placeholder) is
//! refused with a 422 naming the field, the box and the saved key untouched.

use akanda_tests::{conformance_json, dump_state, require_root, RouterLab};
use serde_json::{json, Value};

fn with_vpn(config: &Value, psk: &str) -> Value {
    let mut vpn = conformance_json("astara-router-full.json")["vpn"].clone();
    vpn["ipsec"][0]["ipsec_connections"][0]["psk"] = json!(psk);
    let mut config = config.clone();
    config["vpn"] = vpn;
    config
}

fn hash_of(config: &Value) -> String {
    akanda_model::parse(config.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{e}"))
        .document
        .hash()
}

#[test]
fn the_status_hash_confirms_no_key_and_the_placeholder_is_refused() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("psk");
    let agent = lab.start_agent();
    let http = lab.http();
    let config = with_vpn(&lab.fitted_config(), "the-real-key");
    let r = http.put_json("/v1/system/config", &config);
    assert_eq!(r.status, 200, "{}", r.body);

    // The hash is the same whatever the key: a guess cannot be checked against it.
    let status = http.get("/v1/status").json();
    let reported = status["config_hash"].as_str().unwrap().to_string();
    assert_eq!(reported, hash_of(&config));
    assert_eq!(reported, hash_of(&with_vpn(&config, "a-wrong-guess")));
    assert!(!http.get("/v1/status").body.contains("the-real-key"));

    // GET shows the placeholder; sending that back is refused, naming the field.
    let shown = http.get("/v1/system/config").json()["configuration"].clone();
    assert_eq!(
        shown["vpn"]["ipsec"][0]["ipsec_connections"][0]["psk"],
        "***"
    );
    let kernel_before = dump_state(lab.router());
    let saved = || akanda_tests::saved_config(lab.state_dir()).unwrap();
    let saved_before = saved();
    let r = http.put_json("/v1/system/config", &shown);
    assert_eq!(r.status, 422, "{}", r.body);
    let details = r.json()["details"].clone();
    assert_eq!(
        details[0]["path"], "vpn.ipsec[0].ipsec_connections[0].psk",
        "{details}"
    );
    assert!(
        details[0]["reason"]
            .as_str()
            .unwrap()
            .contains("redaction placeholder"),
        "{details}"
    );
    assert_eq!(dump_state(lab.router()), kernel_before);
    assert_eq!(saved(), saved_before);
    assert!(String::from_utf8_lossy(&saved_before).contains("the-real-key"));
    assert!(
        !agent.log().contains("the-real-key"),
        "the key is in the log"
    );
}
