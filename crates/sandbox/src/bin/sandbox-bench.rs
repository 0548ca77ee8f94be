//! Per-command overhead of the sandbox: the same trivial command run bare and through each
//! runtime configuration, N times each, with p50/p99 in milliseconds.
//!
//! `cargo build --release -p builder-sandbox --bins &&
//! target/release/sandbox-bench [RUNS] [COMMAND]` (defaults: 200 runs of `true`); the
//! Landlock and egress cases need `sandbox-helper` built next to it, the OCI case `crun`
//! (skipped, with a note, when either is missing).

use std::time::{Duration, Instant};

use builder_sandbox::{
    BwrapRuntime, CommandSpec, EgressConfig, HelperProgram, LandlockConfig, OciRuntime,
    ProcessRuntime, SandboxRuntime, describe_limits, parse_allow_list,
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
    println!("| {name:<44} | {p50:>7.2} | {p99:>7.2} | {over:>13} |");
    p50
}

/// One timed run of `spec` under `rt`.
async fn time_once(
    rt: &dyn SandboxRuntime,
    spec: &CommandSpec,
    what: &str,
) -> Result<Duration, BenchError> {
    let t = Instant::now();
    let out = rt.run(spec).await?;
    let took = t.elapsed();
    if !out.success() {
        return Err(BenchError::Failed {
            command: spec.command.clone(),
            what: what.into(),
            output: out.output,
        });
    }
    Ok(took)
}

async fn time_bare(command: &str, dir: &std::path::Path) -> Result<Duration, BenchError> {
    let t = Instant::now();
    let st = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .status()
        .await?;
    let took = t.elapsed();
    if !st.success() {
        return Err(BenchError::Failed {
            command: command.to_string(),
            what: "bare".into(),
            output: st.to_string(),
        });
    }
    Ok(took)
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
    println!("{runs} runs of `{command}` each, cases interleaved\n");
    println!("| {:<44} | p50 ms  | p99 ms  | p50 over bare |", "how");
    println!("|{:-<46}|{:-<9}|{:-<9}|{:-<15}|", "", "", "", "");

    let plain = CommandSpec {
        max_pids: None,
        ..CommandSpec::new(dir.path(), command.as_str())
    };
    let pids = CommandSpec::new(dir.path(), command.as_str());
    let mut all = CommandSpec::new(dir.path(), command.as_str());
    all.limits.memory_mb = Some(1024);
    all.limits.cpu = Some(1.0);
    all.max_disk_mb = Some(1024);
    let mut cases: Vec<(&str, Box<dyn SandboxRuntime>, &CommandSpec)> = vec![
        ("process, no cgroup", Box::new(process.clone()), &plain),
        ("process + cgroup (pids)", Box::new(process.clone()), &pids),
        (
            "process + cgroup (mem,cpu,pids) + disk",
            Box::new(process),
            &all,
        ),
        ("bwrap, no cgroup", Box::new(bwrap.clone()), &plain),
        (
            "bwrap + cgroup (pids, default)",
            Box::new(bwrap.clone()),
            &pids,
        ),
        (
            "bwrap + cgroup (mem,cpu,pids) + disk cap",
            Box::new(bwrap.clone()),
            &all,
        ),
    ];
    // Landlock adds one exec of the helper in the sandbox; the egress allow-list a per-run
    // proxy and the bridge started in the sandbox (by the same helper).
    let helper = HelperProgram::new(std::env::current_exe()?.with_file_name("sandbox-helper"));
    let mut notes = Vec::new();
    if helper.program.is_file() {
        let landlock = bwrap
            .clone()
            .with_landlock(LandlockConfig::new(helper.clone()))?;
        let allow = parse_allow_list("crates.io").map_err(|e| BenchError::Failed {
            command: "parse_allow_list".into(),
            what: "egress".into(),
            output: e.to_string(),
        })?;
        let egress = bwrap
            .clone()
            .with_egress(EgressConfig::with_helper(allow.clone(), &helper))?;
        let both = landlock
            .clone()
            .with_egress(EgressConfig::with_helper(allow, &helper))?;
        cases.push((
            "bwrap + cgroup (pids) + landlock",
            Box::new(landlock),
            &pids,
        ));
        cases.push((
            "bwrap + cgroup (pids) + egress proxy",
            Box::new(egress),
            &pids,
        ));
        cases.push((
            "bwrap + cgroup (pids) + landlock + egress",
            Box::new(both),
            &pids,
        ));
    } else {
        notes.push(
            "no sandbox-helper next to this binary: landlock and egress cases skipped".to_string(),
        );
    }
    match OciRuntime::detect() {
        Ok(oci) => {
            cases.push(("oci (crun), no cgroup", Box::new(oci.clone()), &plain));
            cases.push((
                "oci (crun) + cgroup (pids, default)",
                Box::new(oci.clone()),
                &pids,
            ));
            cases.push((
                "oci (crun) + cgroup (mem,cpu,pids) + disk",
                Box::new(oci),
                &all,
            ));
        }
        Err(e) => notes.push(format!("oci cases skipped: {e}")),
    }

    // Round-robin: every case runs once per round, so load changes on the host (other
    // builds) spread over all cases alike instead of skewing whichever ran at the time.
    let mut bare = Vec::with_capacity(runs);
    let mut times: Vec<Vec<Duration>> = cases.iter().map(|_| Vec::with_capacity(runs)).collect();
    for _ in 0..runs {
        bare.push(time_bare(&command, dir.path()).await?);
        for ((name, rt, spec), t) in cases.iter().zip(times.iter_mut()) {
            t.push(time_once(rt.as_ref(), spec, name).await?);
        }
    }
    let base = row("bare: sh -c (tokio spawn + wait)", bare, None);
    for ((name, _, _), t) in cases.iter().zip(times) {
        row(name, t, Some(base));
    }
    for n in notes {
        println!("({n})");
    }
    Ok(())
}
