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
