//! git-bench: how fast builder gets a working copy of a large repository.
//!
//! Builds a repository locally with `git fast-import` (default 20 000 commits, 3 000 files),
//! serves it over file://, and times, as medians over several runs:
//! - the floor: writing the files of one commit (`git archive | tar -x`);
//! - a fresh `git clone` (builder's `Git::clone_repo`, which always transfers a pack);
//! - builder's `Git::prepare_working_copy` with a cold and with a warm mirror;
//! - the local strategies it chose between (hard-linked clone, `--no-hardlinks`,
//!   `--shared`, `git worktree add`), run directly from the warm mirror;
//! - the mirror's incremental fetch when the remote moved by one commit.
//!
//! Usage: `cargo run --release -p builder-git --bin git-bench -- [--commits N] [--files N]
//! [--runs N] [--dir PATH]`

use builder_git::{Git, GitConfig, GitCredential};
use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn Error>>;

struct Options {
    commits: usize,
    files: usize,
    runs: usize,
    dir: Option<PathBuf>,
}

fn parse_args() -> Res<Options> {
    let mut opts = Options {
        commits: 20_000,
        files: 3_000,
        runs: 3,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--commits" => opts.commits = value()?.parse()?,
            "--files" => opts.files = value()?.parse()?,
            "--runs" => opts.runs = value()?.parse()?,
            "--dir" => opts.dir = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("git-bench [--commits N] [--files N] [--runs N] [--dir PATH]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if opts.commits == 0 || opts.files == 0 || opts.runs == 0 {
        return Err("--commits, --files and --runs must be positive".into());
    }
    Ok(opts)
}

/// A git command isolated from the machine's configuration, like builder's own.
fn git() -> Command {
    let mut cmd = Command::new("git");
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args(["-c", "core.hooksPath=/dev/null", "-c", "gc.auto=0"])
        .stdin(Stdio::null());
    cmd
}

fn run(mut cmd: Command) -> Res<()> {
    let out = cmd.stdout(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// Deterministic file contents (~2 KiB of source-like text) for file `i` at revision `rev`.
fn contents(i: usize, rev: usize) -> String {
    let mut s = format!("// file {i}, revision {rev}\n");
    let mut x = (i as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for line in 0..40 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        s.push_str(&format!("fn f{line}() -> u64 {{ {} }}\n", x >> 33));
    }
    s
}

fn path_of(i: usize) -> String {
    format!("src/m{:02}/d{:02}/file{i}.rs", i % 37, i % 53)
}

/// Writes a fast-import stream: one commit adding every file, then one commit per
/// remaining revision changing one file each.
fn fast_import(bare: &Path, from_rev: usize, commits: usize, files: usize) -> Res<()> {
    let mut child = git()
        .arg("--git-dir")
        .arg(bare)
        .args(["fast-import", "--quiet", "--force"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let stdin = child.stdin.take().ok_or("fast-import without stdin")?;
    let mut w = std::io::BufWriter::new(stdin);
    for rev in from_rev..from_rev + commits {
        let msg = format!("revision {rev}\n");
        writeln!(w, "commit refs/heads/main")?;
        writeln!(
            w,
            "committer Bench <bench@example.invalid> {} +0000",
            1_600_000_000 + rev
        )?;
        writeln!(w, "data {}\n{msg}", msg.len())?;
        // Within one stream fast-import continues the branch by itself; a later stream
        // must name the existing tip.
        if rev == from_rev && rev > 0 {
            writeln!(w, "from refs/heads/main^0")?;
        }
        let changed: Vec<usize> = if rev == 0 {
            (0..files).collect()
        } else {
            vec![(rev * 7919) % files]
        };
        for i in changed {
            let body = contents(i, rev);
            writeln!(w, "M 100644 inline {}", path_of(i))?;
            writeln!(w, "data {}\n{body}", body.len())?;
        }
        writeln!(w)?;
    }
    w.flush()?;
    drop(w);
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("fast-import failed: {status}").into());
    }
    Ok(())
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Res<()> {
    let opts = parse_args()?;
    let tmp;
    let base = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_owned()
        }
    };
    let remote = base.join("remote.git");
    if remote.exists() {
        std::fs::remove_dir_all(&remote)?;
    }
    let t = Instant::now();
    run({
        let mut c = git();
        c.args(["init", "--quiet", "--bare", "-b", "main"])
            .arg(&remote);
        c
    })?;
    fast_import(&remote, 0, opts.commits, opts.files)?;
    run({
        let mut c = git();
        c.arg("--git-dir").arg(&remote).args(["repack", "-adq"]);
        c
    })?;
    let pack_kib: u64 = std::fs::read_dir(remote.join("objects/pack"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len() / 1024)
        .sum();
    println!(
        "repository: {} commits, {} files, pack {:.1} MiB, built in {:.1}s",
        opts.commits,
        opts.files,
        pack_kib as f64 / 1024.0,
        t.elapsed().as_secs_f64()
    );

    let url = format!("file://{}", remote.display());
    let none = GitCredential::None;
    let scratch = base.join("scratch");
    let git_ops = Git::new(GitConfig::default(), &scratch)?;
    let mirrors = base.join("mirrors");
    let out = base.join("out");
    let _ = std::fs::remove_dir_all(&mirrors);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let mut n = 0usize;
    let mut fresh_dest = || {
        n += 1;
        out.join(format!("wc{n}"))
    };

    let mut rows: Vec<(&str, Duration)> = Vec::new();

    // Floor: just write the files of the commit.
    let mut xs = Vec::new();
    for _ in 0..opts.runs {
        let dest = fresh_dest();
        std::fs::create_dir_all(&dest)?;
        let t = Instant::now();
        let script = "git --git-dir=\"$1\" archive --format=tar main | tar -x -C \"$2\"";
        run({
            let mut sh = Command::new("sh");
            sh.env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .args(["-c", script, "sh"])
                .arg(&remote)
                .arg(&dest);
            sh
        })?;
        xs.push(t.elapsed());
    }
    let floor = median(xs);
    rows.push(("floor: git archive | tar -x", floor));

    let mut xs = Vec::new();
    for _ in 0..opts.runs {
        let dest = fresh_dest();
        let t = Instant::now();
        git_ops.clone_repo(&url, &dest, Some("main"), &none).await?;
        xs.push(t.elapsed());
    }
    let fresh = median(xs);
    rows.push(("fresh clone (Git::clone_repo)", fresh));

    let t = Instant::now();
    git_ops
        .prepare_working_copy(&url, &none, &mirrors, &fresh_dest(), Some("main"))
        .await?;
    rows.push(("prepare_working_copy, cold mirror", t.elapsed()));

    let mut xs = Vec::new();
    for _ in 0..opts.runs {
        let dest = fresh_dest();
        let t = Instant::now();
        git_ops
            .prepare_working_copy(&url, &none, &mirrors, &dest, Some("main"))
            .await?;
        xs.push(t.elapsed());
    }
    let warm = median(xs);
    rows.push(("prepare_working_copy, warm mirror", warm));

    let mirror = builder_git::mirror_path(&mirrors, &url);
    type Strategy = (&'static str, fn(&Path, &Path) -> Command);
    let strategies: [Strategy; 4] = [
        ("  strategy: clone (hard links)", |m, d| {
            let mut c = git();
            c.args(["clone", "-q", "--branch", "main"]).arg(m).arg(d);
            c
        }),
        ("  strategy: clone --no-hardlinks", |m, d| {
            let mut c = git();
            c.args(["clone", "-q", "--no-hardlinks", "--branch", "main"])
                .arg(m)
                .arg(d);
            c
        }),
        ("  strategy: clone --shared", |m, d| {
            let mut c = git();
            c.args(["clone", "-q", "--shared", "--branch", "main"])
                .arg(m)
                .arg(d);
            c
        }),
        ("  strategy: worktree add --detach", |m, d| {
            let mut c = git();
            c.arg("--git-dir")
                .arg(m)
                .args(["worktree", "add", "-q", "--detach"])
                .arg(d)
                .arg("main");
            c
        }),
    ];
    for (name, make) in strategies {
        let mut xs = Vec::new();
        for _ in 0..opts.runs {
            let dest = fresh_dest();
            let t = Instant::now();
            run(make(&mirror, &dest))?;
            xs.push(t.elapsed());
        }
        rows.push((name, median(xs)));
    }
    // Leave the mirror as builder keeps it: no worktree registrations.
    run({
        let mut c = git();
        c.arg("--git-dir").arg(&mirror).args(["worktree", "prune"]);
        c
    })?;
    for wt in std::fs::read_dir(&out)? {
        let wt = wt?.path();
        if wt.join(".git").is_file() {
            std::fs::remove_dir_all(&wt)?;
        }
    }

    let mut noop = Vec::new();
    let mut one = Vec::new();
    let mut moved_prepare = Vec::new();
    let mut again = Vec::new();
    for r in 0..opts.runs {
        let t = Instant::now();
        git_ops.fetch_mirror(&url, &none, &mirrors).await?;
        noop.push(t.elapsed());
        fast_import(&remote, opts.commits + 2 * r, 1, opts.files)?;
        let t = Instant::now();
        git_ops.fetch_mirror(&url, &none, &mirrors).await?;
        one.push(t.elapsed());
        fast_import(&remote, opts.commits + 2 * r + 1, 1, opts.files)?;
        let t = Instant::now();
        git_ops
            .prepare_working_copy(&url, &none, &mirrors, &fresh_dest(), Some("main"))
            .await?;
        moved_prepare.push(t.elapsed());
        let t = Instant::now();
        git_ops
            .prepare_working_copy(&url, &none, &mirrors, &fresh_dest(), Some("main"))
            .await?;
        again.push(t.elapsed());
    }
    rows.push(("fetch_mirror, remote unchanged", median(noop)));
    rows.push(("fetch_mirror, remote +1 commit", median(one)));
    rows.push((
        "prepare_working_copy, remote +1 commit",
        median(moved_prepare),
    ));
    rows.push(("prepare_working_copy, right after that", median(again)));

    println!("medians of {} runs over file://\n", opts.runs);
    println!(
        "| {:<40} | {:>9} | {:>8} | {:>10} |",
        "operation", "ms", "× floor", "× faster than clone"
    );
    println!("|{:-<42}|{:->11}|{:->10}|{:->22}|", "", "", "", "");
    for (name, d) in &rows {
        println!(
            "| {:<40} | {:>9.1} | {:>8.2} | {:>20.1} |",
            name,
            ms(*d),
            d.as_secs_f64() / floor.as_secs_f64(),
            fresh.as_secs_f64() / d.as_secs_f64()
        );
    }
    let ok_floor = warm.as_secs_f64() <= 1.2 * floor.as_secs_f64();
    let ok_clone = fresh.as_secs_f64() >= 10.0 * warm.as_secs_f64();
    println!(
        "\ntargets: warm ≤ 1.2× floor: {}; ≥ 10× faster than a fresh clone: {}",
        if ok_floor { "met" } else { "NOT met" },
        if ok_clone { "met" } else { "NOT met" }
    );
    Ok(())
}
