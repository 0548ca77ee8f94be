//! The cost of a repair iteration: a small edit to a real Rust project followed by
//! `cargo test`, in builder's bwrap sandbox with the feature's build cache (as the worker
//! runs it) against the same edit and `cargo test` run natively. Issue 6's target is a
//! sandboxed iteration within 1.2× of the native incremental one.

use crate::stats::{self, Table};
use anyhow::{Context, Result, bail};
use builder_sandbox::{BwrapRuntime, CommandSpec, SandboxLimits, SandboxRuntime};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct RepairArgs {
    /// Incremental iterations measured per mode (after one cold build each).
    pub iterations: usize,
    /// Modules of the generated crate (each with its own tests).
    pub modules: usize,
}

/// One module: eight functions and their tests; `salt` changes one function's body, which
/// is what a repair edit looks like to the compiler.
fn module(m: usize, salt: usize) -> String {
    let mut text = String::new();
    for f in 0..8 {
        let n = f + m + 3 + if f == 0 { salt } else { 0 };
        text.push_str(&format!(
            "pub fn f{f}(x: u64) -> u64 {{\n    let mut acc = x;\n    for i in 0..{n} {{\n        acc = acc.wrapping_mul(31).wrapping_add(i);\n    }}\n    acc\n}}\n\n"
        ));
    }
    text.push_str("#[cfg(test)]\nmod tests {\n    use super::*;\n");
    for f in 0..8 {
        text.push_str(&format!(
            "    #[test]\n    fn t{f}() {{\n        assert_eq!(f{f}(1), f{f}(1));\n    }}\n"
        ));
    }
    text.push_str("}\n");
    text
}

/// A dependency-free crate, so it builds offline, with an integration test.
fn generate(root: &Path, modules: usize) -> Result<()> {
    std::fs::create_dir_all(root.join("src"))?;
    std::fs::create_dir_all(root.join("tests"))?;
    std::fs::write(
        root.join("Cargo.toml"),
        "[package]\nname = \"repairbench\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n",
    )?;
    let mut lib = String::new();
    for m in 0..modules {
        lib.push_str(&format!("pub mod m{m};\n"));
        std::fs::write(root.join(format!("src/m{m}.rs")), module(m, 0))?;
    }
    std::fs::write(root.join("src/lib.rs"), lib)?;
    std::fs::write(
        root.join("tests/it.rs"),
        "#[test]\nfn integration() {\n    assert_eq!(repairbench::m0::f0(2), repairbench::m0::f0(2));\n}\n",
    )?;
    Ok(())
}

fn edit(root: &Path, iteration: usize) -> Result<()> {
    std::fs::write(root.join("src/m0.rs"), module(0, iteration))?;
    Ok(())
}

fn native(root: &Path, target: &Path) -> Result<Duration> {
    let started = Instant::now();
    let out = std::process::Command::new("cargo")
        .args(["test", "--offline", "-q"])
        .current_dir(root)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .context("running cargo test natively")?;
    if !out.status.success() {
        bail!(
            "native cargo test failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(started.elapsed())
}

async fn sandboxed(rt: &BwrapRuntime, root: &Path, cache: &Path) -> Result<Duration> {
    let target = cache.join("cargo-target");
    std::fs::create_dir_all(&target)?;
    let mut spec = CommandSpec::new(root, "cargo test --offline -q");
    spec.writable_extra = vec![cache.to_path_buf()];
    spec.env
        .push(("CARGO_TARGET_DIR".into(), target.display().to_string()));
    spec.limits = SandboxLimits {
        timeout: Duration::from_secs(600),
        ..SandboxLimits::default()
    };
    let started = Instant::now();
    let out = rt
        .run(&spec)
        .await
        .context("running cargo test sandboxed")?;
    let took = started.elapsed();
    if !out.success() {
        bail!(
            "sandboxed cargo test failed: {}",
            out.output
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(took)
}

pub async fn run(args: &RepairArgs, table: &mut Table) -> Result<()> {
    let rt = BwrapRuntime::detect().context("the bwrap sandbox is needed for this section")?;
    let dir = tempfile::tempdir()?;
    let case = format!("{} modules, {} tests", args.modules, args.modules * 8 + 1);

    let native_root: PathBuf = dir.path().join("native");
    generate(&native_root, args.modules)?;
    let native_target = dir.path().join("native-target");
    let cold = native(&native_root, &native_target)?;
    table.add(
        "repair",
        &case,
        "native cold cargo test",
        stats::ms(Some(cold)),
    );
    let mut native_times = Vec::new();
    for i in 1..=args.iterations {
        edit(&native_root, i)?;
        native_times.push(native(&native_root, &native_target)?);
    }

    let sandbox_root = dir.path().join("sandboxed");
    generate(&sandbox_root, args.modules)?;
    let cache = dir.path().join("feature-cache");
    let cold = sandboxed(&rt, &sandbox_root, &cache).await?;
    table.add(
        "repair",
        &case,
        "sandboxed cold cargo test",
        stats::ms(Some(cold)),
    );
    let mut sandbox_times = Vec::new();
    for i in 1..=args.iterations {
        edit(&sandbox_root, i)?;
        sandbox_times.push(sandboxed(&rt, &sandbox_root, &cache).await?);
    }

    // The same command with nothing to rebuild: what the sandbox itself costs per run.
    let mut native_noop = Vec::new();
    let mut sandbox_noop = Vec::new();
    for _ in 0..args.iterations {
        native_noop.push(native(&native_root, &native_target)?);
        sandbox_noop.push(sandboxed(&rt, &sandbox_root, &cache).await?);
    }
    table.add(
        "repair",
        &case,
        "native no-op cargo test",
        stats::summary(&mut native_noop),
    );
    table.add(
        "repair",
        &case,
        "sandboxed no-op cargo test",
        stats::summary(&mut sandbox_noop),
    );

    let n50 = stats::percentile(&mut native_times, 50.0);
    let s50 = stats::percentile(&mut sandbox_times, 50.0);
    table.add(
        "repair",
        &case,
        "native iteration (edit + cargo test)",
        stats::summary(&mut native_times),
    );
    table.add(
        "repair",
        &case,
        "sandboxed iteration (edit + cargo test)",
        stats::summary(&mut sandbox_times),
    );
    if let (Some(n), Some(s)) = (n50, s50) {
        table.add(
            "repair",
            &case,
            "sandboxed / native, p50",
            format!("{:.2}×", s.as_secs_f64() / n.as_secs_f64().max(1e-9)),
        );
    }
    Ok(())
}
