//! Every daemon config check runs with a time limit (issue 12): a check that hangs is killed
//! (with what it started) once `--daemon-check-timeout` has passed, the apply fails and is
//! rolled back, and the apply lock is free again. Reads are answered meanwhile.
//!
//! The hanging check is a stand-in, named so: `slow-check-dnsmasq-stand-in` is given as
//! `--dnsmasq`; while its flag file exists it hangs on `--test` (and starts a grandchild that
//! would hang too), otherwise it runs the real dnsmasq.

use std::time::{Duration, Instant};

use akanda_tests::{agent_bin, process_running, require_root, Agent, RouterLab};

#[test]
fn a_daemon_check_that_hangs_is_killed_and_the_apply_answers_root() {
    use std::os::unix::fs::PermissionsExt;
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("checktimeout");
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("hang");
    let grandchild = dir.path().join("grandchild.pid");
    let stand_in = dir.path().join("slow-check-dnsmasq-stand-in");
    std::fs::write(
        &stand_in,
        format!(
            "#!/bin/sh\n\
             case \" $* \" in *\" --test \"*)\n\
               if [ -e {flag} ]; then sleep 300 & echo $! > {grandchild}; wait; fi;;\n\
             esac\n\
             exec dnsmasq \"$@\"\n",
            flag = flag.display(),
            grandchild = grandchild.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(&flag, "").unwrap();
    let stand_in_arg = stand_in.display().to_string();
    let mut agent = Agent::spawn_program_env(
        &agent_bin(),
        lab.router(),
        lab.listen_addr(),
        Some(lab.state_dir()),
        &["--dnsmasq", &stand_in_arg, "--daemon-check-timeout", "2s"],
        &[],
        true,
    );
    agent.wait_ready(lab.mgmt(), Duration::from_secs(15));
    let config = lab.fitted_config();
    let body = config.to_string();

    // The PUT, on its own thread; reads while its check hangs.
    let put = {
        let http = lab.http();
        let body = body.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let r = http.put_raw("/v1/system/config", "application/json", body.as_bytes());
            (r, started.elapsed())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !grandchild.exists() {
        assert!(Instant::now() < deadline, "the check never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    let hung: i32 = std::fs::read_to_string(&grandchild)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut slowest_read = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        let r = lab.http().get("/v1/status");
        assert_eq!(r.status, 200);
        slowest_read = slowest_read.max(t.elapsed());
    }
    let (r, took) = put.join().unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body
            .contains("config check did not finish within 2s: killed")
            && r.body.contains("the previous state was restored"),
        "{}",
        r.body
    );
    assert!(took < Duration::from_secs(8), "the PUT took {took:?}");
    assert!(
        !process_running(hung),
        "the check's grandchild outlived the timeout"
    );
    // The router's first config failed: nothing it started runs.
    let daemons: Vec<String> = lab
        .router()
        .pids()
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
        .filter(|comm| comm.trim() == "dnsmasq" || comm.trim() == "bird")
        .collect();
    assert!(daemons.is_empty(), "{daemons:?}");
    assert!(!lab.state_dir().join("run/dnsmasq").exists());

    // The lock is free: with the check well again, the same config applies.
    std::fs::remove_file(&flag).unwrap();
    let r = lab
        .http()
        .put_raw("/v1/system/config", "application/json", body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let s = lab.http().get("/v1/status").json();
    assert_eq!(s["services"]["dnsmasq"]["ge2"]["running"], true, "{s:#}");
    eprintln!(
        "stuck check killed after the 2 s limit; PUT answered 409 in {took:.1?}; slowest of 5 reads meanwhile {slowest_read:.1?}"
    );
}
