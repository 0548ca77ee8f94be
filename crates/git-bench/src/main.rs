//! git-bench: how fast builder gets a working copy of a large repository.
//!
//! Builds a repository locally with `git fast-import` (default 20 000 commits, 3 000 files)
//! and serves it over each transport asked for: `file://`, and builder-testkit's smart-HTTP
//! server (the real `git http-backend` behind basic auth) on loopback over `http` and over
//! `https` with a CA made for the run. Every remote operation goes through builder's own
//! `Git` functions, so the credential travels through its askpass helper and the CA through
//! `Git::with_extra_ca_file`, as in production. It times, as medians over `--runs`:
//! - the floor: writing the files of one commit (`git archive | tar -x`), in the same rounds
//!   as the warm working copies it is compared with;
//! - per transport, a fresh clone (`Git::clone_repo`, which always transfers a pack);
//! - per transport, `Git::prepare_working_copy` with a cold and with a warm mirror (each
//!   transport has a mirror of its own, fetched over it; a warm call still runs a no-op
//!   fetch over the transport before cloning locally from the mirror);
//! - the local strategies `prepare_working_copy` chose between (hard-linked clone,
//!   `--no-hardlinks`, `--shared`, `git worktree add`), and the hard-linked clone with
//!   git's parallel checkout (`checkout.workers=0`), run directly from a warm mirror;
//! - per transport, the mirror's fetch when the remote is unchanged and when it moved by one
//!   commit, and `prepare_working_copy` right after the remote moved.
//!
//! Loopback has neither latency nor a bandwidth limit, so the fresh clones here are a lower
//! bound of what a real network remote costs.
//!
//! Usage: `cargo run --release -p builder-git-bench -- [--commits N] [--files N] [--runs N]
//! [--dir PATH] [--transport file|http|https|all[,…]]`

use builder_git::{Git, GitConfig, GitCredential};
use builder_testkit::{GitHttpServer, TestCa};
use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn Error>>;

const USAGE: &str = "git-bench [--commits N] [--files N] [--runs N] [--dir PATH] \
                     [--transport file|http|https|all[,...]]";

/// Basic-auth user of the loopback server; handed to git only through builder's askpass.
const USER: &str = "bench";
const PASS: &str = "bench-pw-1f0c";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    File,
    Http,
    Https,
}

impl Transport {
    const ALL: [Transport; 3] = [Transport::File, Transport::Http, Transport::Https];

    fn name(self) -> &'static str {
        match self {
            Transport::File => "file",
            Transport::Http => "http",
            Transport::Https => "https",
        }
    }
}

struct Options {
    commits: usize,
    files: usize,
    runs: usize,
    dir: Option<PathBuf>,
    transports: Vec<Transport>,
    /// Whether `--transport` was given: then a transport that does not work is an error
    /// rather than skipped.
    explicit: bool,
}

fn parse_transports(value: &str, into: &mut Vec<Transport>) -> Res<()> {
    for part in value.split(',').map(str::trim) {
        let add: &[Transport] = match part {
            "file" => &[Transport::File],
            "http" => &[Transport::Http],
            "https" => &[Transport::Https],
            "all" => &Transport::ALL,
            other => return Err(format!("unknown transport {other:?} ({USAGE})").into()),
        };
        for t in add {
            if !into.contains(t) {
                into.push(*t);
            }
        }
    }
    Ok(())
}

fn parse_args() -> Res<Options> {
    let mut opts = Options {
        commits: 20_000,
        files: 3_000,
        runs: 3,
        dir: None,
        transports: Vec::new(),
        explicit: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--commits" => opts.commits = value()?.parse()?,
            "--files" => opts.files = value()?.parse()?,
            "--runs" => opts.runs = value()?.parse()?,
            "--dir" => opts.dir = Some(PathBuf::from(value()?)),
            "--transport" => {
                parse_transports(&value()?, &mut opts.transports)?;
                opts.explicit = true;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} ({USAGE})").into()),
        }
    }
    if opts.commits == 0 || opts.files == 0 || opts.runs == 0 {
        return Err("--commits, --files and --runs must be positive".into());
    }
    if opts.transports.is_empty() {
        opts.transports = Transport::ALL.to_vec();
    }
    // Always in the same order, whatever order they were asked in.
    opts.transports
        .sort_by_key(|t| Transport::ALL.iter().position(|a| a == t));
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

/// Flushes dirty pages (untimed) so that the writeback of one measurement's files does not
/// land in the next one's time.
fn settle() {
    let _ = Command::new("sync").status();
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

/// The timings of one operation.
#[derive(Clone, Default)]
struct Sample(Vec<Duration>);

impl Sample {
    fn p50(&self) -> Duration {
        let mut xs = self.0.clone();
        xs.sort();
        xs.get(xs.len() / 2).copied().unwrap_or_default()
    }

    fn spread(&self) -> (Duration, Duration) {
        let min = self.0.iter().min().copied().unwrap_or_default();
        let max = self.0.iter().max().copied().unwrap_or_default();
        (min, max)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// One transport's view of the repository.
struct Remote {
    transport: Transport,
    url: String,
    cred: GitCredential,
}

/// Per-transport timings.
#[derive(Default, Clone)]
struct Figures {
    clone: Sample,
    cold: Sample,
    warm: Sample,
    noop_fetch: Sample,
    fetch_one: Sample,
    moved_prepare: Sample,
    again: Sample,
}

struct Dests {
    out: PathBuf,
    n: usize,
}

impl Dests {
    fn next(&mut self) -> PathBuf {
        self.n += 1;
        self.out.join(format!("wc{}", self.n))
    }
}

/// Removes a working copy once it has been timed (untimed), so that the disk use of the
/// run stays that of one working copy.
fn discard(dest: &Path) -> Res<()> {
    std::fs::remove_dir_all(dest).map_err(|e| format!("removing {}: {e}", dest.display()))?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Res<()> {
    let opts = parse_args()?;
    let load_before = loadavg();
    let tmp;
    let base = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.canonicalize()?
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().canonicalize()?
        }
    };
    // Only `served` is exported by the http server.
    let served = base.join("served");
    let remote = served.join("remote.git");
    if remote.exists() {
        std::fs::remove_dir_all(&remote)?;
    }
    std::fs::create_dir_all(&served)?;
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

    let scratch = base.join("scratch");
    let mirrors = base.join("mirrors");
    let out = base.join("out");
    for d in [&scratch, &mirrors, &out] {
        let _ = std::fs::remove_dir_all(d);
    }
    std::fs::create_dir_all(&out)?;
    std::fs::create_dir_all(&scratch)?;

    // The servers live until the end of main; the https one trusts a CA made for this run,
    // handed to builder the way an operator's private CA is.
    let ca = TestCa::new()?;
    let ca_file = ca.write_ca_file(&scratch, "bench-ca.pem")?;
    let git_ops = Git::new(GitConfig::default(), &scratch)?.with_extra_ca_file(&ca_file)?;
    let mut servers = Vec::new();
    let mut remotes = Vec::new();
    let basic = GitCredential::Basic {
        username: USER.into(),
        password: PASS.into(),
    };
    for &transport in &opts.transports {
        let (url, cred) = match transport {
            Transport::File => (format!("file://{}", remote.display()), GitCredential::None),
            Transport::Http | Transport::Https => {
                let server = if transport == Transport::Https {
                    GitHttpServer::start_tls(&served, USER, PASS, &ca)
                } else {
                    GitHttpServer::start(&served, USER, PASS)
                };
                let server = match server {
                    Ok(s) => s,
                    Err(e) if !opts.explicit => {
                        println!("{}: unavailable, skipped ({e})", transport.name());
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let url = server.url("remote.git");
                servers.push(server);
                (url, basic.clone())
            }
        };
        // Probes the transport and the credential through builder's own remote path.
        match git_ops.ls_remote_default_branch(&url, &cred).await {
            Ok(branch) if branch == "main" => {}
            Ok(other) => return Err(format!("{url}: default branch {other:?}").into()),
            Err(e) if !opts.explicit => {
                println!("{}: unavailable, skipped ({e})", transport.name());
                continue;
            }
            Err(e) => return Err(format!("{url}: {e}").into()),
        }
        remotes.push(Remote {
            transport,
            url,
            cred,
        });
    }
    if remotes.is_empty() {
        return Err("no transport available".into());
    }
    for r in &remotes {
        println!("{:<5} {}", r.transport.name(), r.url);
    }

    let mut dests = Dests { out, n: 0 };
    let mut figs: Vec<Figures> = vec![Figures::default(); remotes.len()];

    // The floor is measured in the same rounds as the warm working copies, so that the
    // ratio between them compares like conditions on a busy machine.
    let mut floor = Sample::default();

    // Transports interleaved run by run, so that a change of load hits all of them alike.
    for _ in 0..opts.runs {
        for (r, f) in remotes.iter().zip(figs.iter_mut()) {
            let dest = dests.next();
            settle();
            let t = Instant::now();
            git_ops
                .clone_repo(&r.url, &dest, Some("main"), &r.cred)
                .await?;
            f.clone.0.push(t.elapsed());
            discard(&dest)?;
        }
    }

    for (r, f) in remotes.iter().zip(figs.iter_mut()) {
        let dest = dests.next();
        settle();
        let t = Instant::now();
        git_ops
            .prepare_working_copy(&r.url, &r.cred, &mirrors, &dest, Some("main"))
            .await?;
        f.cold.0.push(t.elapsed());
        discard(&dest)?;
    }

    for _ in 0..opts.runs {
        // Floor: just write the files of the commit.
        let dest = dests.next();
        std::fs::create_dir_all(&dest)?;
        settle();
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
        floor.0.push(t.elapsed());
        discard(&dest)?;
        for (r, f) in remotes.iter().zip(figs.iter_mut()) {
            let dest = dests.next();
            settle();
            let t = Instant::now();
            git_ops
                .prepare_working_copy(&r.url, &r.cred, &mirrors, &dest, Some("main"))
                .await?;
            f.warm.0.push(t.elapsed());
            discard(&dest)?;
        }
    }

    // The local strategies, from the first transport's mirror: none of them touches the
    // network, so the transport does not matter.
    let mirror = builder_git::mirror_path(&mirrors, &remotes[0].url);
    type Strategy = (&'static str, fn(&Path, &Path) -> Command);
    let strategies: [Strategy; 5] = [
        ("strategy: clone (hard links)", |m, d| {
            let mut c = git();
            c.args(["clone", "-q", "--branch", "main"]).arg(m).arg(d);
            c
        }),
        // Same as the first, with git's parallel checkout (one worker per core): whether
        // writing the files, not the clone, is what separates a working copy from the floor.
        ("strategy: clone, checkout.workers=0", |m, d| {
            let mut c = git();
            c.args([
                "-c",
                "checkout.workers=0",
                "clone",
                "-q",
                "--branch",
                "main",
            ])
            .arg(m)
            .arg(d);
            c
        }),
        ("strategy: clone --no-hardlinks", |m, d| {
            let mut c = git();
            c.args(["clone", "-q", "--no-hardlinks", "--branch", "main"])
                .arg(m)
                .arg(d);
            c
        }),
        ("strategy: clone --shared", |m, d| {
            let mut c = git();
            c.args(["clone", "-q", "--shared", "--branch", "main"])
                .arg(m)
                .arg(d);
            c
        }),
        ("strategy: worktree add --detach", |m, d| {
            let mut c = git();
            c.arg("--git-dir")
                .arg(m)
                .args(["worktree", "add", "-q", "--detach"])
                .arg(d)
                .arg("main");
            c
        }),
    ];
    let mut local_rows: Vec<(&str, Sample)> = Vec::new();
    for (name, make) in strategies {
        let mut xs = Sample::default();
        for _ in 0..opts.runs {
            let dest = dests.next();
            settle();
            let t = Instant::now();
            run(make(&mirror, &dest))?;
            xs.0.push(t.elapsed());
            discard(&dest)?;
        }
        local_rows.push((name, xs));
    }
    // Leave the mirror as builder keeps it: no worktree registrations.
    run({
        let mut c = git();
        c.arg("--git-dir").arg(&mirror).args(["worktree", "prune"]);
        c
    })?;

    // The remote moves once per step and every transport's mirror follows it by exactly
    // that one commit.
    for r in 0..opts.runs {
        for (rem, f) in remotes.iter().zip(figs.iter_mut()) {
            let t = Instant::now();
            git_ops.fetch_mirror(&rem.url, &rem.cred, &mirrors).await?;
            f.noop_fetch.0.push(t.elapsed());
        }
        fast_import(&remote, opts.commits + 2 * r, 1, opts.files)?;
        for (rem, f) in remotes.iter().zip(figs.iter_mut()) {
            settle();
            let t = Instant::now();
            git_ops.fetch_mirror(&rem.url, &rem.cred, &mirrors).await?;
            f.fetch_one.0.push(t.elapsed());
        }
        fast_import(&remote, opts.commits + 2 * r + 1, 1, opts.files)?;
        for (rem, f) in remotes.iter().zip(figs.iter_mut()) {
            let dest = dests.next();
            settle();
            let t = Instant::now();
            git_ops
                .prepare_working_copy(&rem.url, &rem.cred, &mirrors, &dest, Some("main"))
                .await?;
            f.moved_prepare.0.push(t.elapsed());
            discard(&dest)?;
            let dest = dests.next();
            settle();
            let t = Instant::now();
            git_ops
                .prepare_working_copy(&rem.url, &rem.cred, &mirrors, &dest, Some("main"))
                .await?;
            f.again.0.push(t.elapsed());
            discard(&dest)?;
        }
    }
    let load_after = loadavg();

    let floor_p50 = floor.p50();
    println!(
        "\np50 (min–max) of {} runs; load average (1/5/15 min) before: {load_before}, after: \
         {load_after}\n",
        opts.runs
    );
    println!(
        "| {:<40} | {:<5} | {:>9} | {:>17} | {:>7} |",
        "operation", "via", "p50 ms", "min–max ms", "× floor"
    );
    println!(
        "|{:-<42}|{:-<7}|{:->11}|{:->19}|{:->9}|",
        "", "", "", "", ""
    );
    let row = |name: &str, via: &str, s: &Sample| {
        let (lo, hi) = s.spread();
        println!(
            "| {:<40} | {:<5} | {:>9.1} | {:>17} | {:>7.2} |",
            name,
            via,
            ms(s.p50()),
            format!("{:.0}–{:.0}", ms(lo), ms(hi)),
            s.p50().as_secs_f64() / floor_p50.as_secs_f64()
        );
    };
    row("floor: git archive | tar -x", "-", &floor);
    type Pick = fn(&Figures) -> &Sample;
    let per_transport: [(&str, Pick); 7] = [
        ("fresh clone (Git::clone_repo)", |f| &f.clone),
        ("prepare_working_copy, cold mirror", |f| &f.cold),
        ("prepare_working_copy, warm mirror", |f| &f.warm),
        ("fetch_mirror, remote unchanged", |f| &f.noop_fetch),
        ("fetch_mirror, remote +1 commit", |f| &f.fetch_one),
        ("prepare_working_copy, remote +1 commit", |f| {
            &f.moved_prepare
        }),
        ("prepare_working_copy, right after that", |f| &f.again),
    ];
    for (name, pick) in per_transport {
        for (r, f) in remotes.iter().zip(&figs) {
            row(name, r.transport.name(), pick(f));
        }
    }
    for (name, s) in &local_rows {
        row(name, "local", s);
    }

    println!(
        "\n| {:<5} | {:>8} | {:>11} | {:>9} | {:>8} | {:>8} | {:>8} | {:<21} |",
        "via",
        "floor ms",
        "fresh clone",
        "warm wc",
        "fetch +1",
        "wc/floor",
        "clone/wc",
        "targets (floor/clone)"
    );
    println!(
        "|{:-<7}|{:->10}|{:->13}|{:->11}|{:->10}|{:->10}|{:->10}|{:-<23}|",
        "", "", "", "", "", "", "", ""
    );
    for (r, f) in remotes.iter().zip(&figs) {
        let (clone, warm) = (f.clone.p50().as_secs_f64(), f.warm.p50().as_secs_f64());
        let wc_floor = warm / floor_p50.as_secs_f64();
        let clone_wc = clone / warm;
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        println!(
            "| {:<5} | {:>8.1} | {:>11.1} | {:>9.1} | {:>8.1} | {:>8.2} | {:>8.1} | {:<21} |",
            r.transport.name(),
            ms(floor_p50),
            ms(f.clone.p50()),
            ms(f.warm.p50()),
            ms(f.fetch_one.p50()),
            wc_floor,
            clone_wc,
            format!("{}/{}", met(wc_floor <= 1.2), met(clone_wc >= 10.0)),
        );
    }
    println!(
        "\ntargets: warm wc ≤ 1.2× floor / fresh clone ≥ 10× the warm wc; all times in ms, \
         p50 of {} runs",
        opts.runs
    );
    // On loopback a fresh clone costs what indexing the pack and writing the files cost;
    // over a real link the pack's transfer comes on top. An estimate, not a measurement:
    // the slowest warm wc above and the transfer alone, ignoring the CPU part of the clone.
    let slowest_warm = figs.iter().map(|f| f.warm.p50()).max().unwrap_or_default();
    let pack_mbit = pack_kib as f64 * 1024.0 * 8.0 / 1e6;
    println!(
        "estimate: transferring the {:.1} MiB pack alone takes ≥ 10× the warm wc ({:.0} ms) \
         on links slower than {:.1} Mbit/s",
        pack_kib as f64 / 1024.0,
        ms(slowest_warm),
        pack_mbit / (10.0 * slowest_warm.as_secs_f64())
    );
    drop(servers);
    Ok(())
}
