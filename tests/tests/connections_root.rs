//! Connections that cannot starve the agent (issue 12), against the live agent in namespaces:
//!
//! - slow clients and stalled bodies while PUTs wait for the apply lock: they are cut off by
//!   the header and body timeouts, the PUTs and the reads go through, and the reads never wait
//!   for the running apply;
//! - the API's answer time while 300 stalled connections are open (printed, for the notes),
//!   and a flood beyond the connection cap, which holds no more descriptors than the cap;
//! - `accept` failing for want of descriptors (EMFILE) does not spin the CPU;
//! - a connection flood on a metadata proxy from one tenant address leaves it serving others,
//!   and its request bodies are capped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use akanda_tests::{config_with_floating_ips, in_netns, require_root, Agent, Netns, RouterLab};
use serde_json::Value;

/// One request on a fresh connection from `ns`: (status, body, time to the full answer).
fn request(
    ns: &Netns,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> (u16, String, Duration) {
    in_netns(ns, || {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        // A hang guard, not a timing assertion.
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n");
        if let Some(b) = body {
            head += &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            );
        }
        head += "\r\n";
        s.write_all(head.as_bytes()).unwrap();
        if let Some(b) = body {
            s.write_all(b).unwrap();
        }
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let (status, body) = parse_response(&out);
        (status, body, started.elapsed())
    })
}

fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Opens `n` connections from `ns` and sends each `prefix` (maybe nothing): they stay open
/// until dropped.
fn open_stalled(ns: &Netns, addr: SocketAddr, n: usize, prefix: &[u8]) -> Vec<TcpStream> {
    in_netns(ns, || {
        (0..n)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(prefix).unwrap();
                s
            })
            .collect()
    })
}

/// Seconds until the peer closes `s` (EOF or reset), waiting at most `within`.
fn closed_within(mut s: &TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(started.elapsed())
            }
            Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// User + system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// This process may open many sockets (the floods).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on our own process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

fn count_in_log(agent: &Agent, what: &str) -> usize {
    agent.log().matches(what).count()
}

fn fitted_heavy(fitted: &Value, floating_ips: u32) -> Value {
    let mut heavy = config_with_floating_ips(floating_ips);
    for i in 0..3 {
        heavy["networks"][i]["interface"]["ifname"] =
            fitted["networks"][i]["interface"]["ifname"].clone();
    }
    heavy
}

#[test]
fn slow_clients_and_stalled_bodies_hold_nothing_while_puts_wait_and_reads_never_wait() {
    if !require_root() {
        return;
    }
    let lab = RouterLab::new("slow");
    let mut agent = Agent::spawn_with_args(
        lab.router(),
        lab.listen_addr(),
        Some(lab.state_dir()),
        &[
            "--header-read-timeout",
            "2s",
            "--body-timeout",
            "2s",
            "--idle-timeout",
            "3s",
        ],
    );
    agent.wait_ready(lab.mgmt(), Duration::from_secs(15));
    let addr = lab.listen_addr();
    let fitted = lab.fitted_config();
    let fitted_bytes = fitted.to_string().into_bytes();
    let (status, body, _) = request(
        lab.mgmt(),
        addr,
        "PUT",
        "/v1/system/config",
        Some(&fitted_bytes),
    );
    assert_eq!(status, 200, "{body}");
    let heavy = fitted_heavy(&fitted, 10_000).to_string().into_bytes();

    let requested = count_in_log(&agent, "config change requested");
    std::thread::scope(|s| {
        // The apply that holds the lock, and a second PUT queued behind it.
        let heavy_put = s.spawn(|| {
            let r = request(lab.mgmt(), addr, "PUT", "/v1/system/config", Some(&heavy));
            (r, Instant::now())
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while count_in_log(&agent, "config change requested") == requested {
            assert!(Instant::now() < deadline, "the heavy PUT never started");
            std::thread::sleep(Duration::from_millis(2));
        }
        let apply_started = Instant::now();
        let queued_put = s.spawn(|| {
            request(
                lab.mgmt(),
                addr,
                "PUT",
                "/v1/system/config",
                Some(&fitted_bytes),
            )
        });
        // A body that stalls after its first bytes, and headers that never end.
        let mut stalled_body = open_stalled(
            lab.mgmt(),
            addr,
            1,
            b"PUT /v1/system/config HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"networks\": [",
        )
        .remove(0);
        let stalled_head = open_stalled(
            lab.mgmt(),
            addr,
            1,
            b"PUT /v1/system/config HTTP/1.1\r\nHost: a",
        )
        .remove(0);

        // Reads while the apply runs: every kind, as long as it runs.
        let reads = [
            "/v1/base/",
            "/v1/status",
            "/v1/system/interfaces",
            "/v1/system/config",
        ];
        let mut during: Vec<(&str, Duration)> = Vec::new();
        while !heavy_put.is_finished() {
            for path in reads {
                let (status, body, took) = request(lab.mgmt(), addr, "GET", path, None);
                assert_eq!(status, 200, "GET {path}: {body}");
                if !heavy_put.is_finished() {
                    during.push((path, took));
                }
            }
        }
        let ((status, body, heavy_took), heavy_done) = heavy_put.join().unwrap();
        assert_eq!(status, 200, "{body}");
        let apply_ran = heavy_done - apply_started;
        let (status, body, queued_took) = queued_put.join().unwrap();
        assert_eq!(status, 200, "{body}");

        // The stalled body got 408 after the body timeout, the stalled head was closed.
        stalled_body
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = stalled_body.read_to_end(&mut answer);
        let (status, body) = parse_response(&answer);
        assert_eq!(status, 408, "{body}");
        assert!(body.contains("did not arrive within"), "{body}");
        assert!(
            closed_within(&stalled_head, Duration::from_secs(30)).is_some(),
            "the stalled head is still open"
        );

        let slowest = during.iter().map(|(_, t)| *t).max().unwrap_or_default();
        println!(
            "heavy apply (10,000 floating IPs): {heavy_took:?} for the PUT, {apply_ran:?} from its \
             start; the queued PUT: {queued_took:?}; {} reads during the apply, slowest {slowest:?}",
            during.len()
        );
        // The reads were answered while the apply ran: each endpoint at least once.
        if apply_ran > Duration::from_millis(500) {
            for path in reads {
                assert!(
                    during.iter().any(|(p, _)| *p == path),
                    "GET {path} was never answered during a {apply_ran:?} apply: {during:?}"
                );
            }
        }
    });
    // Both PUTs applied; the stalled and slow clients changed nothing.
    let (_, body, _) = request(lab.mgmt(), addr, "GET", "/v1/status", None);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["applies"]["ok"], 3, "{status}");
    assert_eq!(status["applies"]["failed"], 0, "{status}");
    assert!(agent.try_wait().is_none(), "the agent died");
}

#[test]
fn the_api_answers_through_300_stalled_connections_and_a_flood_is_capped() {
    if !require_root() {
        return;
    }
    raise_fd_limit();
    let lab = RouterLab::new("flood");
    let mut agent = Agent::spawn_with_args(
        lab.router(),
        lab.listen_addr(),
        Some(lab.state_dir()),
        &["--header-read-timeout", "30s", "--max-connections", "400"],
    );
    agent.wait_ready(lab.mgmt(), Duration::from_secs(15));
    let addr = lab.listen_addr();
    let measure = |what: &str| {
        let mut times: Vec<Duration> = (0..50)
            .map(|_| {
                let (status, body, took) = request(lab.mgmt(), addr, "GET", "/v1/status", None);
                assert_eq!(status, 200, "{body}");
                took
            })
            .collect();
        times.sort();
        println!(
            "GET /v1/status {what}: median {:?}, p95 {:?}, max {:?} (50 requests)",
            times[25], times[47], times[49]
        );
        times[49]
    };
    measure("with no other connection");

    // 300 stalled connections: half silent, half with an unfinished request line.
    let mut stalled = open_stalled(lab.mgmt(), addr, 150, b"");
    stalled.extend(open_stalled(
        lab.mgmt(),
        addr,
        150,
        b"GET /v1/status HTTP/1.1\r\n",
    ));
    std::thread::sleep(Duration::from_millis(300));
    let max = measure("while 300 stalled connections are open");
    assert!(max < Duration::from_secs(10), "a read took {max:?}");
    let fds_300 = open_fds(agent.pid());

    // A flood beyond the cap: the agent holds at most the cap.
    stalled.extend(open_stalled(lab.mgmt(), addr, 300, b""));
    std::thread::sleep(Duration::from_millis(500));
    let fds_flood = open_fds(agent.pid());
    println!(
        "agent descriptors: {fds_300} with 300 stalled connections, {fds_flood} with 600 (cap 400)"
    );
    assert!(
        fds_300 >= 300,
        "{fds_300}: the 300 connections were not accepted"
    );
    assert!(
        fds_flood <= 400 + 64,
        "{fds_flood} descriptors over a cap of 400"
    );
    drop(stalled);
    let (status, body, took) = request(lab.mgmt(), addr, "GET", "/v1/status", None);
    assert_eq!(status, 200, "{body}");
    println!("after the flood ended: answered in {took:?}");
    assert!(agent.try_wait().is_none(), "the agent died");
}

#[test]
fn accept_backs_off_when_descriptors_run_out() {
    if !require_root() {
        return;
    }
    raise_fd_limit();
    let lab = RouterLab::new("emfile");
    let mut agent = Agent::spawn_with_args(
        lab.router(),
        lab.listen_addr(),
        Some(lab.state_dir()),
        &["--header-read-timeout", "3s"],
    );
    agent.wait_ready(lab.mgmt(), Duration::from_secs(15));
    let pid = agent.pid();
    // A few descriptors more than it holds now: the flood exhausts them.
    let limit = (open_fds(pid) + 8) as u64;
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit on our own child with a valid struct.
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let flood = open_stalled(lab.mgmt(), lab.listen_addr(), 100, b"");
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(pid);
    let window = Duration::from_secs(2);
    std::thread::sleep(window);
    let used = (cpu_ticks(pid) - before) as f64 / ticks_per_second() as f64;
    let share = used / window.as_secs_f64();
    println!(
        "agent CPU while accept fails with EMFILE: {:.1} % of a core",
        share * 100.0
    );
    assert!(
        agent.log().contains("accept failed: backing off"),
        "accept never failed\n{}",
        agent.log()
    );
    // A spinning accept loop takes a whole core.
    assert!(
        share < 0.3,
        "the agent used {:.0} % of a core",
        share * 100.0
    );
    drop(flood);
    // The accepted ones are closed by the header timeout; then the API answers again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answered = in_netns(lab.mgmt(), || {
            TcpStream::connect_timeout(&lab.listen_addr(), Duration::from_secs(2)).ok()
        })
        .is_some_and(|_| true);
        if answered {
            let (status, _, _) = request(lab.mgmt(), lab.listen_addr(), "GET", "/v1/base/", None);
            if status == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the API never came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(agent.try_wait().is_none(), "the agent died");
}

#[test]
fn a_metadata_flood_from_one_address_leaves_the_proxy_serving_the_others() {
    if !require_root() {
        return;
    }
    raise_fd_limit();
    let lab = RouterLab::new("mdflood");
    let agent = lab.start_agent();
    let config = lab.fitted_config();
    let r = lab.http().put_json("/v1/system/config", &config);
    assert_eq!(r.status, 200, "{}", r.body);
    lab.t1().sh("ip route replace default via 192.168.0.1");
    // A second address on t1's network, for the client that is not flooding.
    lab.t1().ip("addr add 192.168.0.9/24 dev eth0");
    let metadata: SocketAddr = "169.254.169.254:80".parse().unwrap();
    let fds_before = open_fds(agent.pid());

    // 300 stalled connections from 192.168.0.2: 32 are held, the rest closed at once.
    let mut flood = open_stalled(
        lab.t1(),
        metadata,
        300,
        b"GET /latest/meta-data/ HTTP/1.1\r\n",
    );
    std::thread::sleep(Duration::from_millis(300));
    let fds_flood = open_fds(agent.pid());
    flood.retain(|s| closed_within(s, Duration::from_millis(10)).is_none());
    let closed_at_once = 300 - flood.len();
    println!(
        "metadata flood of 300: {closed_at_once} closed at once, agent descriptors {fds_before} -> {fds_flood}"
    );
    assert!(closed_at_once >= 300 - 32, "{closed_at_once} closed");
    assert!(
        fds_flood <= fds_before + 32 + 8,
        "{fds_before} -> {fds_flood}"
    );
    assert!(
        fds_flood >= fds_before + 16,
        "{fds_before} -> {fds_flood}: none held"
    );

    // Another address is still served (it is no instance: 404 from the proxy itself).
    let answer = lab.t1().sh(
        "curl -sS -o /dev/null -w '%{http_code}' --max-time 10 --interface 192.168.0.9 http://169.254.169.254/latest/meta-data/",
    );
    assert_eq!(answer.trim(), "404", "{answer}");

    // The held ones are closed by the header timeout (10 s).
    let started = Instant::now();
    for s in &flood {
        let left = Duration::from_secs(20).saturating_sub(started.elapsed());
        assert!(
            closed_within(s, left.max(Duration::from_millis(1))).is_some(),
            "a stalled metadata connection outlived the header timeout"
        );
    }
    println!(
        "held metadata connections closed after {:?}",
        started.elapsed()
    );
    let status: Value = lab.http().get("/v1/status").json();
    let refused = status["services"]["metadata"]
        .as_object()
        .unwrap()
        .values()
        .map(|l| l["refused_connections"].as_u64().unwrap_or(0))
        .sum::<u64>();
    assert!(refused >= 268, "{status}");

    // A request body over the proxy's cap is refused before anything goes upstream.
    let answer = lab.t1().sh(
        "head -c 100000 /dev/zero | curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -H 'Expect:' --data-binary @- http://169.254.169.254/openstack/latest/password",
    );
    assert_eq!(answer.trim(), "413", "{answer}");
}
