//! The binary's command line: settings errors name the key; the router commands find the admin
//! socket from --config or the environment.

use std::process::Command;

fn rug_lite() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rug-lite"));
    c.env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("RUG_LITE_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn serve_reports_the_bad_key_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rug-lite.toml");
    std::fs::write(
        &path,
        "[appliance]\nimage = \"i\"\nflavor = \"f\"\nmanagement_network = \"mgt\"\n\
         [tls]\ninsecure_http = true\n",
    )
    .unwrap();
    let out = rug_lite()
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUG_LITE_APPLIANCE_BOOT_TIMEOUT", "forever")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("appliance.boot_timeout (from RUG_LITE_APPLIANCE_BOOT_TIMEOUT)"),
        "{err}"
    );
}

#[test]
fn router_list_finds_the_socket_from_the_config_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.toml");
    let socket = dir.path().join("from-file.sock");
    std::fs::write(
        &path,
        format!("[admin]\nsocket = {:?}\n", socket.display().to_string()),
    )
    .unwrap();
    let out = rug_lite()
        .args(["router", "list", "--json", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot reach rug-lite serve at {}",
            socket.display()
        )),
        "{err}"
    );

    let out = rug_lite()
        .args(["router", "show", "r1", "--json"])
        .env("RUG_LITE_ADMIN_SOCKET", "/nonexistent/env.sock")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach rug-lite serve at /nonexistent/env.sock"),
        "{err}"
    );
}
