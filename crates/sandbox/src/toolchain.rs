//! Where the host's language toolchains live, and the minimal environment a sandboxed
//! command gets. The host environment is read here only to *find* toolchains; none of its
//! values is passed through.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Toolchain locations found on the host when a runtime was created.
#[derive(Debug, Clone, Default)]
pub(crate) struct Toolchains {
    /// Existing toolchain directories/files to expose read-only (beyond the system dirs).
    pub ro_binds: Vec<PathBuf>,
    /// Existing directories put in front of the system PATH.
    pub path_dirs: Vec<PathBuf>,
    cargo_home: Option<PathBuf>,
    rustup_home: Option<PathBuf>,
    pyenv_root: Option<PathBuf>,
    go_mod_cache: Option<PathBuf>,
}

const SYSTEM_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// What of `$CARGO_HOME` is needed for offline builds. Deliberately not the whole directory:
/// `credentials.toml` holds registry tokens.
const CARGO_HOME_ENTRIES: &[&str] = &["bin", "registry", "git", "config.toml", "config"];

impl Toolchains {
    pub fn detect() -> Self {
        Self::detect_with(|k| std::env::var_os(k))
    }

    pub fn detect_with(var: impl Fn(&str) -> Option<OsString>) -> Self {
        let abs = |k: &str| var(k).map(PathBuf::from).filter(|p| p.is_absolute());
        let home = abs("HOME");
        let under_home = |rel: &str| home.as_ref().map(|h| h.join(rel));
        let existing = |p: Option<PathBuf>| p.filter(|p| p.exists());

        let mut t = Toolchains {
            cargo_home: existing(abs("CARGO_HOME").or_else(|| under_home(".cargo"))),
            rustup_home: existing(abs("RUSTUP_HOME").or_else(|| under_home(".rustup"))),
            pyenv_root: existing(abs("PYENV_ROOT").or_else(|| under_home(".pyenv"))),
            go_mod_cache: existing(
                abs("GOMODCACHE")
                    .or_else(|| abs("GOPATH").map(|g| g.join("pkg/mod")))
                    .or_else(|| under_home("go/pkg/mod")),
            ),
            ..Default::default()
        };
        if let Some(cargo) = &t.cargo_home {
            for entry in CARGO_HOME_ENTRIES {
                let p = cargo.join(entry);
                if p.exists() {
                    t.ro_binds.push(p);
                }
            }
            let bin = cargo.join("bin");
            if bin.is_dir() {
                t.path_dirs.push(bin);
            }
        }
        if let Some(rustup) = &t.rustup_home {
            t.ro_binds.push(rustup.clone());
        }
        if let Some(pyenv) = &t.pyenv_root {
            t.ro_binds.push(pyenv.clone());
            for sub in ["shims", "bin"] {
                let p = pyenv.join(sub);
                if p.is_dir() {
                    t.path_dirs.push(p);
                }
            }
        }
        if let Some(gomod) = &t.go_mod_cache {
            t.ro_binds.push(gomod.clone());
        }
        let go_bin = PathBuf::from("/usr/local/go/bin");
        if go_bin.is_dir() {
            t.path_dirs.push(go_bin);
        }
        t
    }

    pub fn path_var(&self) -> String {
        let mut parts: Vec<String> = self
            .path_dirs
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        parts.extend(SYSTEM_PATH.iter().map(|s| s.to_string()));
        parts.join(":")
    }

    /// The complete environment of a sandboxed command before `CommandSpec::env` is applied.
    /// `home` is a writable directory private to the command.
    pub fn base_env(&self, home: &Path) -> Vec<(String, String)> {
        let home_s = home.display().to_string();
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), self.path_var()),
            ("HOME".into(), home_s.clone()),
            ("TMPDIR".into(), home_s.clone()),
            ("LANG".into(), "C.UTF-8".into()),
            // Non-interactive, uncoloured output parses reliably; jest & co. stop prompting.
            ("CI".into(), "true".into()),
            ("NO_COLOR".into(), "1".into()),
            ("CARGO_NET_OFFLINE".into(), "true".into()),
            ("CARGO_TERM_COLOR".into(), "never".into()),
            // A repository's rust-toolchain.toml must not trigger a download attempt.
            ("RUSTUP_AUTO_INSTALL".into(), "0".into()),
            // Bytecode caches go to the private home, not into the working copy that is
            // committed afterwards.
            ("PYTHONPYCACHEPREFIX".into(), format!("{home_s}/.pycache")),
            ("PIP_NO_INDEX".into(), "1".into()),
            ("PIP_DISABLE_PIP_VERSION_CHECK".into(), "1".into()),
            ("NPM_CONFIG_UPDATE_NOTIFIER".into(), "false".into()),
            ("NPM_CONFIG_FUND".into(), "false".into()),
            ("NPM_CONFIG_AUDIT".into(), "false".into()),
            ("GOPROXY".into(), "off".into()),
            ("GOTOOLCHAIN".into(), "local".into()),
        ];
        let mut set = |k: &str, v: &Option<PathBuf>| {
            if let Some(v) = v {
                env.push((k.to_string(), v.display().to_string()));
            }
        };
        set("CARGO_HOME", &self.cargo_home);
        set("RUSTUP_HOME", &self.rustup_home);
        set("PYENV_ROOT", &self.pyenv_root);
        set("GOMODCACHE", &self.go_mod_cache);
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_toolchains_under_home_and_skips_cargo_credentials() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        std::fs::create_dir_all(h.join(".cargo/bin")).unwrap();
        std::fs::create_dir_all(h.join(".cargo/registry")).unwrap();
        std::fs::write(h.join(".cargo/credentials.toml"), "token = 'x'").unwrap();
        std::fs::create_dir_all(h.join(".pyenv/shims")).unwrap();
        let hs = h.as_os_str().to_owned();
        let t = Toolchains::detect_with(|k| (k == "HOME").then(|| hs.clone()));

        assert!(t.ro_binds.contains(&h.join(".cargo/bin")));
        assert!(t.ro_binds.contains(&h.join(".cargo/registry")));
        assert!(t.ro_binds.contains(&h.join(".pyenv")));
        assert!(!t.ro_binds.iter().any(|p| p.ends_with("credentials.toml")));
        assert!(!t.ro_binds.contains(&h.join(".cargo")));
        assert!(
            !t.ro_binds.contains(&h.join(".rustup")),
            "absent dirs are not bound"
        );
        assert!(t.path_var().starts_with(&format!(
            "{}:{}:",
            h.join(".cargo/bin").display(),
            h.join(".pyenv/shims").display()
        )));
        let env = t.base_env(Path::new("/tmp"));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CARGO_HOME"), Some(h.join(".cargo").to_str().unwrap()));
        assert_eq!(get("RUSTUP_HOME"), None);
        assert_eq!(get("HOME"), Some("/tmp"));
        assert_eq!(get("CARGO_NET_OFFLINE"), Some("true"));
    }

    #[test]
    fn relative_or_missing_vars_are_ignored() {
        let t = Toolchains::detect_with(|k| (k == "HOME").then(|| OsString::from("relative/home")));
        assert!(t.ro_binds.is_empty());
        assert!(!t.path_var().contains("relative"));
    }
}
