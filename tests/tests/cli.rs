//! `akanda-agent validate FILE`: same messages as the API, exit 0 valid / 1 invalid / 2 unreadable.

use std::process::Command;

use akanda_tests::{agent_bin, conformance_path};

fn validate(path: &std::path::Path) -> (i32, String) {
    let out = Command::new(agent_bin())
        .args(["validate"])
        .arg(path)
        .output()
        .expect("run akanda-agent");
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn conformance_files_validate() {
    for name in ["astara-router-basic.json", "astara-router-full.json"] {
        let (code, out) = validate(&conformance_path(name));
        assert_eq!(code, 0, "{name}: {out}");
        assert!(out.starts_with("valid: "), "{out}");
    }
}

#[test]
fn invalid_file_lists_every_problem_and_exits_1() {
    let mut doc = akanda_tests::conformance_json("astara-router-basic.json");
    doc["networks"][2]["subnets"][0]["cidr"] = "192.168.0.0/33".into();
    doc.as_object_mut().unwrap().remove("hostname");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let (code, out) = validate(&path);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("networks[2].subnets[0].cidr: \"192.168.0.0/33\" is not a valid CIDR"),
        "{out}"
    );
    assert!(out.contains("hostname: is required"), "{out}");

    std::fs::write(&path, "{not json").unwrap();
    let (code, out) = validate(&path);
    assert_eq!(code, 1);
    assert!(out.contains("malformed JSON"), "{out}");
}

#[test]
fn unreadable_file_exits_2() {
    let (code, out) = validate(std::path::Path::new("/nonexistent/akanda.json"));
    assert_eq!(code, 2, "{out}");
}

/// Failpoints are only in `akanda-agent-failpoints`: the agent that ships (debug and the
/// release build that goes into the image) carries none of their code, and the failpoint
/// build does (so the check looks for the right strings).
#[test]
fn only_the_failpoint_build_carries_failpoints() {
    // grep -F: the debug binaries are hundreds of megabytes.
    let carries = |bin: &std::path::Path| {
        ["AKANDA_FAILPOINTS", "failpoint reached"].map(|needle| {
            let status = Command::new("grep")
                .args(["-q", "-a", "-F", needle])
                .arg(bin)
                .status()
                .expect("run grep");
            assert!(status.code().is_some_and(|c| c <= 1), "grep: {status}");
            status.success()
        })
    };
    assert_eq!(
        carries(&akanda_tests::failpoint_agent_bin()),
        [true, true],
        "the strings looked for are not those of the failpoint build"
    );
    for bin in [agent_bin(), akanda_tests::release_bin("akanda-agent")] {
        assert_eq!(
            carries(&bin),
            [false, false],
            "{} has failpoints",
            bin.display()
        );
    }
}

/// A config slot as agent/src/store.rs describes it: a 512-byte header line, then the JSON.
fn slot(generation: u64, config: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let body = format!(
        "akanda-config 1 {generation} {} {} ",
        config.len(),
        hex::encode(Sha256::digest(config))
    );
    let check = hex::encode(Sha256::digest(body.as_bytes()));
    let mut s = format!("{body}{}\n", &check[..16]).into_bytes();
    s.resize(512, 0);
    s.extend_from_slice(config);
    s.extend_from_slice(b"\n    ");
    s
}

/// `akanda-agent saved-config` and the harness's reader agree on what is saved: nothing (exit
/// 1), an older agent's config.json, the slot of the higher generation, or (that slot's
/// header torn) the other one.
#[test]
fn saved_config_prints_the_last_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let out = Command::new(agent_bin())
            .args(["saved-config", "--state-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let harness = akanda_tests::saved_config(dir.path());
        if out.status.code() == Some(0) {
            let mut printed = out.stdout.clone();
            assert_eq!(printed.pop(), Some(b'\n'));
            assert_eq!(Some(printed), harness);
        } else {
            assert_eq!(harness, None);
        }
        (out.status.code(), out.stdout)
    };
    assert_eq!(run(), (Some(1), Vec::new()));
    std::fs::write(dir.path().join("config.json"), b"{\"old\":1}").unwrap();
    assert_eq!(run(), (Some(0), b"{\"old\":1}\n".to_vec()));
    let (a, b) = (&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]);
    std::fs::write(dir.path().join("config.0"), slot(1, a)).unwrap();
    let mut second = slot(2, b);
    std::fs::write(dir.path().join("config.1"), &second).unwrap();
    assert_eq!(run(), (Some(0), b"{\"b\":2}\n".to_vec()));
    second[20] ^= 1;
    std::fs::write(dir.path().join("config.1"), &second).unwrap();
    assert_eq!(run(), (Some(0), b"{\"a\":1}\n".to_vec()));
}
