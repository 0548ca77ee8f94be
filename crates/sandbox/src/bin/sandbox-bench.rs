//! Per-command overhead of the sandbox: the same trivial command run bare and through each
//! runtime configuration, N times each, with p50/p99 in milliseconds.
//!
//! `cargo build --release -p builder-sandbox --bins &&
//! target/release/sandbox-bench [RUNS] [COMMAND]` (defaults: 200 runs of `true`); the
//! egress case needs `sandbox-netbridge` built next to it.

use std::time::{Duration, Instant};

use builder_sandbox::{
    BwrapRuntime, CommandSpec, EgressConfig, ProcessRuntime, SandboxRuntime, describe_limits,
    parse_allow_list,
};

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("RUNS must be a positive number, got `{0}`")]
    Runs(String),
    #[error(transparent)]
    Sandbox(#[from] builder_sandbox::SandboxError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("`{command}` failed under {what}: {output}")]
    Failed {
        command: String,
        what: String,
        output: String,
    },
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn row(name: &str, mut times: Vec<Duration>, bare_p50: Option<f64>) -> f64 {
    times.sort();
    let p50 = percentile(&times, 0.5);
    let p99 = percentile(&times, 0.99);
    let over = bare_p50.map_or(String::from("-"), |b| format!("{:+.2}", p50 - b));
    println!("| {name:<40} | {p50:>7.2} | {p99:>7.2} | {over:>13} |");
    p50
}

async fn time_runtime(
    rt: &dyn SandboxRuntime,
    spec: &CommandSpec,
    runs: usize,
    what: &str,
) -> Result<Vec<Duration>, BenchError> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let out = rt.run(spec).await?;
        times.push(t.elapsed());
        if !out.success() {
            return Err(BenchError::Failed {
                command: spec.command.clone(),
                what: what.into(),
                output: out.output,
            });
        }
    }
    Ok(times)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BenchError> {
    let mut args = std::env::args().skip(1);
    let runs = match args.next() {
        Some(r) => r
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or(BenchError::Runs(r))?,
        None => 200,
    };
    let command = args.next().unwrap_or_else(|| "true".to_string());
    let dir = tempfile::tempdir()?;
    let bwrap = BwrapRuntime::detect()?;
    let process = ProcessRuntime::new();
    println!("{}", describe_limits());
    println!("{runs} runs of `{command}` each\n");
    println!("| {:<40} | p50 ms  | p99 ms  | p50 over bare |", "how");
    println!("|{:-<42}|{:-<9}|{:-<9}|{:-<15}|", "", "", "", "");

    let mut bare = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let st = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&command)
            .current_dir(dir.path())
            .status()
            .await?;
        bare.push(t.elapsed());
        if !st.success() {
            return Err(BenchError::Failed {
                command: command.clone(),
                what: "bare".into(),
                output: st.to_string(),
            });
        }
    }
    let base = row("bare: sh -c (tokio spawn + wait)", bare, None);

    let plain = CommandSpec {
        max_pids: None,
        ..CommandSpec::new(dir.path(), command.as_str())
    };
    let pids = CommandSpec::new(dir.path(), command.as_str());
    let mut all = CommandSpec::new(dir.path(), command.as_str());
    all.limits.memory_mb = Some(1024);
    all.limits.cpu = Some(1.0);
    all.max_disk_mb = Some(1024);
    let cases: [(&str, &dyn SandboxRuntime, &CommandSpec); 6] = [
        ("process, no cgroup", &process, &plain),
        ("process + cgroup (pids)", &process, &pids),
        ("bwrap, no cgroup", &bwrap, &plain),
        ("bwrap + cgroup (pids, default)", &bwrap, &pids),
        ("bwrap + cgroup (mem,cpu,pids) + disk cap", &bwrap, &all),
        ("process + cgroup (mem,cpu,pids) + disk", &process, &all),
    ];
    for (name, rt, spec) in cases {
        let times = time_runtime(rt, spec, runs, name).await?;
        row(name, times, Some(base));
    }
    // The egress allow-list adds a per-run proxy and the bridge started in the sandbox.
    let bridge = std::env::current_exe()?.with_file_name("sandbox-netbridge");
    if bridge.is_file() {
        let egress = bwrap.clone().with_egress(EgressConfig {
            allow: parse_allow_list("crates.io").map_err(|e| BenchError::Failed {
                command: "parse_allow_list".into(),
                what: "egress".into(),
                output: e.to_string(),
            })?,
            bridge_program: bridge,
            bridge_args_prefix: vec![],
        })?;
        let name = "bwrap + cgroup (pids) + egress proxy";
        let times = time_runtime(&egress, &pids, runs, name).await?;
        row(name, times, Some(base));
    } else {
        println!("(no sandbox-netbridge next to this binary: egress case skipped)");
    }
    Ok(())
}
