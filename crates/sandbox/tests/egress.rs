//! The network egress allow-list end to end: real bwrap, the real bridge program
//! (`sandbox-helper net-bridge`) inside the sandbox, the per-run proxy in this process, and real
//! clients (curl, python3, bash's /dev/tcp) talking to servers on the host's loopback.
//!
//! The tests take a common lock: the "nothing left behind" checks look at host-wide state
//! (processes, temp dirs) that a concurrent egress run would disturb.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

mod common;

use common::{
    HELPER, bwrap, bwrap_without_landlock, helper, host_dir, processes_mentioning, run, spec,
};

use builder_sandbox::{
    BwrapRuntime, EgressConfig, ExecOutcome, LandlockConfig, SandboxError, SandboxRuntime,
    parse_allow_list,
};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The bridge's processes: the helper program running `net-bridge`.
const BRIDGE: &str = "sandbox-helper net-bridge";

fn with_egress(allow: &str) -> BwrapRuntime {
    bwrap()
        .with_egress(EgressConfig {
            allow: parse_allow_list(allow).unwrap(),
            bridge_program: PathBuf::from(HELPER),
            bridge_args_prefix: helper().net_bridge_prefix(),
        })
        .expect("the bridge starts inside bwrap")
}

/// An HTTP server on the host's loopback answering every request with `hello from host`
/// and remembering each request head.
async fn http_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).into_owned());
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\nConnection: close\r\n\r\n\
                          hello from host",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, seen)
}

fn egress_dirs() -> usize {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("builder-egress-")
        })
        .count()
}

fn assert_nothing_left_behind(dirs_before: usize) {
    assert_eq!(
        processes_mentioning(BRIDGE),
        Vec::<String>::new(),
        "bridge processes outlived the run"
    );
    assert_eq!(
        egress_dirs(),
        dirs_before,
        "the proxy's socket directory outlived the run"
    );
}

fn refused_hosts(out: &ExecOutcome) -> Vec<(String, u16)> {
    out.egress_refused
        .iter()
        .map(|r| (r.host.clone(), r.port))
        .collect()
}

#[tokio::test]
async fn an_allowed_host_is_reached_through_the_proxy_and_other_hosts_are_refused() {
    let _serial = SERIAL.lock().await;
    let (port, seen) = http_server().await;
    let dirs_before = egress_dirs();
    let rt = with_egress(&format!("127.0.0.1:{port}"));
    let dir = host_dir();
    let cmd = format!(
        "curl -sS --max-time 20 http://127.0.0.1:{port}/via-curl; echo; \
         python3 -c \"import urllib.request as u; \
print(u.urlopen('http://127.0.0.1:{port}/via-python', timeout=20).read().decode())\"; \
         curl -sS --max-time 20 -o /dev/null -w 'status=%{{http_code}}\\n' http://Not-Allowed.example/x; \
         curl -sS --max-time 20 https://crates.io/ 2>&1 | tail -1; \
         env | grep -i _proxy | sort"
    );
    let out = run(&rt, &spec(dir.path(), &cmd)).await;
    assert!(out.success(), "{out:?}");
    assert_eq!(
        out.output.matches("hello from host").count(),
        2,
        "{}",
        out.output
    );
    let heads = seen.lock().unwrap().clone();
    assert!(
        heads
            .iter()
            .any(|h| h.starts_with("GET /via-curl HTTP/1.1")),
        "{heads:?}"
    );
    assert!(
        heads.iter().any(|h| h.starts_with("GET /via-python ")),
        "{heads:?}"
    );
    assert!(out.output.contains("status=403"), "{}", out.output);
    // curl reports the refused CONNECT of the https request.
    assert!(out.output.contains("403"), "{}", out.output);
    assert_eq!(
        refused_hosts(&out),
        [
            ("not-allowed.example".to_string(), 80),
            ("crates.io".to_string(), 443)
        ],
        "{out:?}"
    );
    assert!(
        out.egress_refused[0]
            .reason
            .contains("not on the egress allow-list"),
        "{:?}",
        out.egress_refused
    );
    assert!(
        out.limits_hit
            .iter()
            .any(|l| l.starts_with("network: 2 egress connection(s) refused")
                && l.contains("not-allowed.example:80")),
        "{:?}",
        out.limits_hit
    );
    assert!(
        out.enforced_limits
            .iter()
            .any(|l| l == "network=allow-list(1 hosts) via proxy"),
        "{:?}",
        out.enforced_limits
    );
    assert!(!out.enforced_limits.iter().any(|l| l == "network=none"));
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        assert!(
            out.output
                .contains(&format!("{var}=http://127.0.0.1:3128\n")),
            "{var}: {}",
            out.output
        );
    }
    // A loopback entry means loopback goes through the proxy: no NO_PROXY exemption.
    assert!(!out.output.contains("NO_PROXY"), "{}", out.output);
    assert_nothing_left_behind(dirs_before);
}

#[tokio::test]
async fn a_connect_tunnel_works_end_to_end() {
    let _serial = SERIAL.lock().await;
    let (port, seen) = http_server().await;
    let rt = with_egress(&format!("127.0.0.1:{port}"));
    let dir = host_dir();
    // `-p` makes curl open a CONNECT tunnel even for http://.
    let cmd = format!("curl -sS --max-time 20 -p http://127.0.0.1:{port}/tunnelled");
    let out = run(&rt, &spec(dir.path(), &cmd)).await;
    assert!(out.success(), "{out:?}");
    assert_eq!(out.output, "hello from host", "{out:?}");
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(heads[0].starts_with("GET /tunnelled HTTP/1.1"), "{heads:?}");
    assert!(out.egress_refused.is_empty());
}

#[tokio::test]
async fn a_port_not_on_the_list_is_refused_and_recorded() {
    let _serial = SERIAL.lock().await;
    let (allowed, _) = http_server().await;
    let (other, other_seen) = http_server().await;
    let rt = with_egress(&format!("127.0.0.1:{allowed}"));
    let dir = host_dir();
    let cmd = format!(
        "curl -sS --max-time 20 -o /dev/null -w '%{{http_code}}\\n' http://127.0.0.1:{other}/; \
         curl -sS --max-time 20 -p http://127.0.0.1:{other}/ 2>&1; true"
    );
    let out = run(&rt, &spec(dir.path(), &cmd)).await;
    assert!(out.output.starts_with("403\n"), "{}", out.output);
    assert_eq!(
        refused_hosts(&out),
        [
            ("127.0.0.1".to_string(), other),
            ("127.0.0.1".to_string(), other)
        ]
    );
    assert!(
        other_seen.lock().unwrap().is_empty(),
        "the refused server was reached"
    );
}

#[tokio::test]
async fn direct_connections_still_fail_with_egress_on() {
    let _serial = SERIAL.lock().await;
    let (port, seen) = http_server().await;
    let rt = with_egress(&format!("127.0.0.1:{port}"));
    let dir = host_dir();
    let probe = |target: &str| {
        format!(
            "(bash -c 'exec 3<>/dev/tcp/{target}' 2>/dev/null && echo CONNECTED {target} \
             || echo REFUSED {target}); "
        )
    };
    let mut cmd = probe(&format!("127.0.0.1/{port}"));
    cmd += &probe("1.1.1.1/443");
    cmd += &format!(
        "curl -sS --max-time 5 --noproxy '*' http://127.0.0.1:{port}/direct >/dev/null 2>&1 \
         && echo CONNECTED curl || echo REFUSED curl; "
    );
    cmd += "ip -o link 2>/dev/null | grep -v ' lo:' | grep -q . && echo HAS_INTERFACES; true";
    let out = run(&rt, &spec(dir.path(), &cmd)).await;
    assert!(!out.output.contains("CONNECTED"), "{}", out.output);
    assert!(!out.output.contains("HAS_INTERFACES"), "{}", out.output);
    assert_eq!(out.output.matches("REFUSED").count(), 3, "{}", out.output);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn malformed_proxy_requests_get_400_and_the_proxy_keeps_serving() {
    let _serial = SERIAL.lock().await;
    let (port, _) = http_server().await;
    let rt = with_egress(&format!("127.0.0.1:{port}"));
    let dir = host_dir();
    let raw = |req: &str| {
        format!("bash -c 'exec 3<>/dev/tcp/127.0.0.1/3128; printf \"{req}\" >&3; head -n1 <&3'; ")
    };
    let mut cmd = raw("garbage\\r\\n\\r\\n");
    cmd += &raw("GET /not-absolute HTTP/1.1\\r\\n\\r\\n");
    cmd += &raw("CONNECT no-port HTTP/1.1\\r\\n\\r\\n");
    cmd += &raw("\\001\\002\\377\\r\\n\\r\\n");
    cmd += &format!("curl -sS --max-time 20 http://127.0.0.1:{port}/after");
    let out = run(&rt, &spec(dir.path(), &cmd)).await;
    assert_eq!(
        out.output.matches("HTTP/1.1 400 Bad Request").count(),
        4,
        "{}",
        out.output
    );
    assert!(out.output.ends_with("hello from host"), "{}", out.output);
    assert!(out.egress_refused.is_empty(), "{:?}", out.egress_refused);
}

#[tokio::test]
async fn an_allowed_name_resolving_to_an_internal_address_is_refused() {
    let _serial = SERIAL.lock().await;
    // The host's own name usually resolves to loopback or a private address: exactly what
    // a hostile DNS answer for an allowed name would do.
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_ascii_lowercase();
    let internal = std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 80))
        .map(|mut a| {
            a.all(|a| {
                let ip = a.ip().to_canonical();
                ip.is_loopback()
                    || match ip {
                        std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
                        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
                    }
            })
        })
        .unwrap_or(false);
    if name.is_empty() || name.parse::<builder_sandbox::HostPattern>().is_err() || !internal {
        eprintln!("SKIPPED: host name `{name}` does not resolve only to internal addresses");
        return;
    }
    let (port, seen) = http_server().await;
    let rt = with_egress(&format!("{name}:{port}"));
    let dir = host_dir();
    let cmd = format!("curl -sS --max-time 20 -w '\\n%{{http_code}}' http://{name}:{port}/");
    let out = run(&rt, &spec(dir.path(), &cmd)).await;
    assert!(out.output.ends_with("403"), "{}", out.output);
    assert!(out.output.contains("DNS-rebinding"), "{}", out.output);
    assert_eq!(refused_hosts(&out), [(name.clone(), port)]);
    assert!(seen.lock().unwrap().is_empty());
    // `localhost` itself on the list may reach loopback.
    let rt = with_egress(&format!("localhost:{port}"));
    let out = run(
        &rt,
        &spec(
            dir.path(),
            &format!("curl -sS --max-time 20 http://localhost:{port}/lo"),
        ),
    )
    .await;
    assert_eq!(out.output, "hello from host", "{out:?}");
}

#[tokio::test]
async fn the_proxy_and_the_bridge_are_gone_after_a_cancelled_run() {
    let _serial = SERIAL.lock().await;
    let (port, _) = http_server().await;
    let dirs_before = egress_dirs();
    let rt = with_egress(&format!("127.0.0.1:{port}"));
    let dir = host_dir();
    let marker = dir.path().join("started");
    let s = spec(
        dir.path(),
        &format!(
            "curl -sS --max-time 20 http://127.0.0.1:{port}/ > {m}; sleep 30",
            m = marker.display()
        ),
    );
    let mut fut = rt.run(&s);
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if std::fs::read_to_string(&marker).is_ok_and(|s| s.contains("hello")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    tokio::select! {
        r = &mut fut => panic!("the run ended early: {r:?}"),
        r = waited => r.expect("the sandboxed curl got through"),
    }
    assert!(
        !processes_mentioning(BRIDGE).is_empty(),
        "the bridge runs while the command does"
    );
    drop(fut);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !processes_mentioning(BRIDGE).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_nothing_left_behind(dirs_before);
}

#[tokio::test]
async fn without_an_allow_list_nothing_changes() {
    let _serial = SERIAL.lock().await;
    let rt = bwrap()
        .with_egress(EgressConfig {
            allow: vec![],
            bridge_program: PathBuf::from("/nonexistent"),
            bridge_args_prefix: vec![],
        })
        .unwrap();
    assert!(rt.egress_allow_list().is_empty());
    let dir = host_dir();
    let out = run(
        &rt,
        &spec(
            dir.path(),
            "env | grep -i '_proxy='; echo CARGO_NET_OFFLINE=$CARGO_NET_OFFLINE",
        ),
    )
    .await;
    assert_eq!(out.output, "CARGO_NET_OFFLINE=true\n", "{out:?}");
    assert!(out.enforced_limits.iter().any(|l| l == "network=none"));
    assert!(out.egress_refused.is_empty());
    assert_eq!(processes_mentioning(BRIDGE), Vec::<String>::new());
}

#[tokio::test]
async fn egress_env_drops_offline_switches_and_exempts_the_sandboxs_own_loopback() {
    let _serial = SERIAL.lock().await;
    let rt = with_egress("crates.io *.npmjs.org");
    assert_eq!(rt.egress_allow_list().len(), 2);
    let dir = host_dir();
    let out = run(
        &rt,
        &spec(
            dir.path(),
            "echo offline=$CARGO_NET_OFFLINE$PIP_NO_INDEX$GOPROXY; echo no_proxy=$NO_PROXY",
        ),
    )
    .await;
    assert_eq!(
        out.output, "offline=\nno_proxy=localhost,127.0.0.1,::1\n",
        "{out:?}"
    );
    assert!(
        out.enforced_limits
            .iter()
            .any(|l| l == "network=allow-list(2 hosts) via proxy")
    );
}

#[tokio::test]
async fn a_bridge_that_cannot_start_is_refused_at_configuration() {
    let _serial = SERIAL.lock().await;
    let cfg = |program: &str| EgressConfig {
        allow: parse_allow_list("crates.io").unwrap(),
        bridge_program: PathBuf::from(program),
        bridge_args_prefix: vec![],
    };
    for program in ["/nonexistent/bridge", "/bin/false"] {
        match bwrap().with_egress(cfg(program)) {
            Err(SandboxError::Unavailable { reason, .. }) => {
                assert!(reason.contains("egress"), "{reason}")
            }
            other => panic!("{program}: {other:?}"),
        }
    }
    // A prefix the bridge does not understand makes it exit with a usage error.
    let mut bad = cfg(HELPER);
    bad.bridge_args_prefix = vec!["net-bridge".into(), "--bogus".into()];
    assert!(bwrap().with_egress(bad).is_err());
}

/// Production's shape: one helper program runs the bridge (`net-bridge`) and the Landlock
/// launcher (`exec`); Landlock leaves TCP open only to the bridge's port.
#[tokio::test]
async fn one_helper_program_runs_the_bridge_and_the_landlock_launcher() {
    let _serial = SERIAL.lock().await;
    let (port, seen) = http_server().await;
    let dirs_before = egress_dirs();
    let rt = bwrap_without_landlock()
        .with_landlock(LandlockConfig::new(helper()))
        .unwrap()
        .with_egress(EgressConfig::with_helper(
            parse_allow_list(&format!("127.0.0.1:{port}")).unwrap(),
            &helper(),
        ))
        .unwrap();
    let dir = host_dir();
    let cmd = format!(
        "curl -sS --max-time 20 http://127.0.0.1:{port}/via-helper; echo; \
         python3 -c 'import socket; socket.socket().bind((\"127.0.0.1\", 0))' 2>&1 | tail -1; \
         (bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>/dev/null && echo DIRECT_CONNECTED \
          || echo DIRECT_REFUSED); ps -eo args | grep -c '^[^ ]*sandbox-helper net-bridge'"
    );
    let out = run(&rt, &spec(dir.path(), &cmd)).await;
    assert!(out.success(), "{out:?}");
    assert!(out.output.contains("hello from host"), "{}", out.output);
    assert!(
        out.output.contains("PermissionError: [Errno 13]"),
        "landlock refuses other TCP binds: {}",
        out.output
    );
    assert!(out.output.contains("DIRECT_REFUSED"), "{}", out.output);
    assert!(out.output.ends_with("1\n"), "one bridge: {}", out.output);
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|h| h.starts_with("GET /via-helper ")),
    );
    for l in [
        "landlock-tcp=bridge-port-only",
        "network=allow-list(1 hosts) via proxy",
    ] {
        assert!(out.enforced_limits.iter().any(|e| e == l), "{l}: {out:?}");
    }
    assert_eq!(egress_dirs(), dirs_before);
}

#[test]
fn the_bridge_program_reports_usage_errors() {
    let out = std::process::Command::new(HELPER)
        .args(["net-bridge", "--listen"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--listen needs a value") && err.contains("usage"),
        "{err}"
    );
}

/// The runtime under `dyn`, as the worker holds it.
#[tokio::test]
async fn works_behind_the_trait_object() {
    let _serial = SERIAL.lock().await;
    let (port, _) = http_server().await;
    let rt: Box<dyn SandboxRuntime> = Box::new(with_egress(&format!("127.0.0.1:{port}")));
    let dir = host_dir();
    let out = run(
        rt.as_ref(),
        &spec(
            dir.path(),
            &format!("curl -sS --max-time 20 http://127.0.0.1:{port}/; exit 7"),
        ),
    )
    .await;
    assert_eq!(out.exit_code, Some(7), "the command's own status: {out:?}");
    assert_eq!(out.output, "hello from host");
}

/// The real thing, against the public registry (needs the host's network, hence ignored):
/// `cargo fetch` through the proxy with only crates.io's hosts allowed.
/// `cargo test -p builder-sandbox --test egress -- --ignored`
#[tokio::test]
#[ignore = "reaches crates.io"]
async fn cargo_fetch_reaches_crates_io_through_the_proxy() {
    let _serial = SERIAL.lock().await;
    let rt = with_egress("index.crates.io static.crates.io");
    let dir = host_dir();
    let w = dir.path();
    std::fs::create_dir(w.join("src")).unwrap();
    std::fs::write(w.join("src/lib.rs"), "").unwrap();
    std::fs::write(
        w.join("Cargo.toml"),
        "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\nitoa = \"=1.0.11\"\n",
    )
    .unwrap();
    let mut s = spec(w, "cargo fetch 2>&1; ls $CARGO_HOME/registry/cache/*/");
    // The host's CARGO_HOME is read-only in the sandbox; a fetch needs its own.
    s.env = vec![(
        "CARGO_HOME".into(),
        w.join(".cargo-home").display().to_string(),
    )];
    s.limits.timeout = Duration::from_secs(120);
    let out = run(&rt, &s).await;
    assert!(out.success(), "{out:?}");
    assert!(out.output.contains("itoa-1.0.11.crate"), "{}", out.output);
    assert!(out.egress_refused.is_empty(), "{:?}", out.egress_refused);
}

/// Same for npm (ignored: reaches the npm registry).
#[tokio::test]
#[ignore = "reaches registry.npmjs.org"]
async fn npm_install_reaches_the_npm_registry_through_the_proxy() {
    let _serial = SERIAL.lock().await;
    let rt = with_egress("registry.npmjs.org");
    let dir = host_dir();
    let w = dir.path();
    std::fs::write(
        w.join("package.json"),
        r#"{"name": "t", "version": "1.0.0", "dependencies": {"is-number": "7.0.0"}}"#,
    )
    .unwrap();
    let mut s = spec(
        w,
        "npm install --no-audit --no-fund 2>&1 && ls node_modules",
    );
    s.limits.timeout = Duration::from_secs(120);
    let out = run(&rt, &s).await;
    assert!(out.success(), "{out:?}");
    assert!(out.output.contains("is-number"), "{}", out.output);
    assert!(out.egress_refused.is_empty(), "{:?}", out.egress_refused);
}

/// A run's own allow-list (`CommandSpec::network`, the dependency phase's way out) reaches
/// its hosts while the runtime's default stays "no network", and a run that names none is
/// back to no network at all.
#[tokio::test]
async fn a_run_can_be_given_its_own_allow_list_without_widening_the_runtime() {
    let _serial = SERIAL.lock().await;
    let (port, seen) = http_server().await;
    let rt = bwrap()
        .with_per_run_egress(EgressConfig {
            allow: Vec::new(),
            bridge_program: PathBuf::from(HELPER),
            bridge_args_prefix: helper().net_bridge_prefix(),
        })
        .expect("the bridge program exists");
    let dir = host_dir();
    let fetch = format!("curl -sS --max-time 20 http://127.0.0.1:{port}/per-run");

    let mut allowed = spec(dir.path(), &fetch);
    allowed.network = Some(parse_allow_list(&format!("127.0.0.1:{port}")).unwrap());
    let out = run(&rt, &allowed).await;
    assert!(out.success(), "{out:?}");
    assert!(out.output.contains("hello from host"), "{}", out.output);
    assert!(
        out.enforced_limits
            .iter()
            .any(|l| l == "network=allow-list(1 hosts) via proxy"),
        "{:?}",
        out.enforced_limits
    );

    for network in [None, Some(Vec::new())] {
        let mut closed = spec(dir.path(), &fetch);
        closed.network = network.clone();
        let out = run(&rt, &closed).await;
        assert!(!out.success(), "{network:?}: {out:?}");
        assert!(
            out.enforced_limits.iter().any(|l| l == "network=none"),
            "{:?}",
            out.enforced_limits
        );
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "only the run with its own allow-list reached the server"
    );

    // Without a bridge program a per-run allow-list is refused, never widened or ignored.
    let mut needs_bridge = spec(dir.path(), "true");
    needs_bridge.network = Some(parse_allow_list("127.0.0.1:1").unwrap());
    match bwrap_without_landlock().run(&needs_bridge).await {
        Err(SandboxError::Unavailable { reason, .. }) => {
            assert!(reason.contains("egress bridge"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
