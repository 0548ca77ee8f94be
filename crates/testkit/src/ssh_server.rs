//! A real OpenSSH server (`sshd` from openssh-server) on a loopback port, run as the
//! current user from a private temporary directory with its own host key and
//! `authorized_keys`, so git's ssh transport can be tested end to end.

use crate::{Result, TestkitError, io_err};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";

/// A running `sshd`; killed when dropped.
pub struct SshServer {
    child: Child,
    addr: SocketAddr,
    user: String,
    root: PathBuf,
    host_public_key: String,
    dir: tempfile::TempDir,
}

/// An ed25519 key pair made by `ssh-keygen`: (private key in OpenSSH format, public key
/// line).
pub fn generate_ssh_key() -> Result<(String, String)> {
    let dir = tempfile::tempdir().map_err(io_err("creating a key dir"))?;
    let path = dir.path().join("id_ed25519");
    keygen(&path)?;
    let private = std::fs::read_to_string(&path).map_err(io_err("reading the private key"))?;
    let public = std::fs::read_to_string(path.with_extension("pub"))
        .map_err(io_err("reading the public key"))?;
    Ok((private, public.trim().to_owned()))
}

fn keygen(path: &Path) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "builder-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("running ssh-keygen (apt package openssh-client)"))?;
    if !out.status.success() {
        return Err(TestkitError::InvalidInput(format!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

fn current_user() -> Result<String> {
    let out = Command::new("id")
        .arg("-un")
        .output()
        .map_err(io_err("running id -un"))?;
    let user = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || user.is_empty() {
        return Err(TestkitError::InvalidInput(
            "cannot tell the current user".into(),
        ));
    }
    Ok(user)
}

impl SshServer {
    /// Starts `sshd` on 127.0.0.1 accepting only `authorized_key` (a public key line) for
    /// the current user, serving repositories under `root` by absolute path.
    pub fn start(root: &Path, authorized_key: &str) -> Result<SshServer> {
        if !Path::new(SSHD).is_file() {
            return Err(TestkitError::InvalidInput(format!(
                "{SSHD} not found: install the openssh-server package"
            )));
        }
        if authorized_key.contains('\n') {
            return Err(TestkitError::InvalidInput(
                "one public key line expected".into(),
            ));
        }
        let root = std::path::absolute(root).map_err(io_err("resolving the repo root"))?;
        let user = current_user()?;
        // As root, sshd insists on its privilege-separation directory (normally made by
        // systemd-tmpfiles, which containers do not run).
        if user == "root" && !Path::new("/run/sshd").is_dir() {
            std::fs::create_dir_all("/run/sshd").map_err(io_err("creating /run/sshd"))?;
        }
        let dir = tempfile::tempdir().map_err(io_err("creating the sshd dir"))?;
        let host_key = dir.path().join("host_ed25519");
        keygen(&host_key)?;
        let host_public_key = std::fs::read_to_string(host_key.with_extension("pub"))
            .map_err(io_err("reading the host key"))?
            .trim()
            .to_owned();
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, format!("{authorized_key}\n"))
            .map_err(io_err("writing authorized_keys"))?;

        // Bind-and-release picks a free port; a lost race shows up as sshd exiting, which
        // start reports.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io_err("picking a port"))?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nAllowUsers {user}\nLogLevel VERBOSE\n\
                 AllowTcpForwarding no\nX11Forwarding no\nPermitTTY no\n",
                host_key.display(),
                authorized.display(),
            ),
        )
        .map_err(io_err("writing sshd_config"))?;
        let log = dir.path().join("sshd.log");
        let mut child = Command::new(SSHD)
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_err("starting sshd"))?;
        let started = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            let exited = child.try_wait().map_err(io_err("waiting for sshd"))?;
            if exited.is_some() || started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TestkitError::InvalidInput(format!(
                    "sshd did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(SshServer {
            child,
            addr,
            user,
            root,
            host_public_key,
            dir,
        })
    }

    /// `ssh://user@127.0.0.1:port/<root>/<name>.git`.
    pub fn url(&self, repo_name: &str) -> String {
        format!(
            "ssh://{}@{}{}/{repo_name}.git",
            self.user,
            self.addr,
            self.root.display()
        )
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's host public key line (`ssh-ed25519 AAAA… comment`).
    pub fn host_public_key(&self) -> &str {
        &self.host_public_key
    }

    /// sshd's log so far (authentication attempts, for assertions and failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
