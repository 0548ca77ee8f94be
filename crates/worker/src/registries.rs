//! Which hosts a dependency phase may reach: the package registries of the ecosystems a
//! repository uses, as this host's own package managers are configured (so a mirror the
//! operator set up is what is allowed), plus whatever the operator lists in
//! `BUILDER_DEPS_EGRESS_WHITELIST`. Nothing here is hard-wired: a registry that cannot be
//! found out is reported, and the phase then runs with the configured hosts only.

use builder_sandbox::{HostPattern, parse_allow_list};
use std::collections::BTreeMap;
use std::path::Path;

/// Registry hosts per ecosystem (`cargo`, `npm`, `pip`, `go`) and the operator's extra list.
#[derive(Debug, Clone, Default)]
pub struct RegistryHosts {
    pub by_ecosystem: BTreeMap<&'static str, Vec<HostPattern>>,
    /// `BUILDER_DEPS_EGRESS_WHITELIST`: allowed for every dependency phase.
    pub extra: Vec<HostPattern>,
    /// What could not be found out, for the start-up log and the phase's failure message.
    pub notes: Vec<String>,
}

/// The ecosystem whose registries a detected language needs.
pub fn ecosystem_of(language: &str) -> Option<&'static str> {
    match language {
        "rust" => Some("cargo"),
        "javascript" | "typescript" => Some("npm"),
        "python" => Some("pip"),
        "go" => Some("go"),
        _ => None,
    }
}

impl RegistryHosts {
    /// Reads this host's package-manager configuration. Runs only the package managers'
    /// own configuration queries (no repository code), each with a short timeout.
    pub fn discover(extra: Vec<HostPattern>) -> RegistryHosts {
        let mut r = RegistryHosts {
            extra,
            ..Default::default()
        };
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
        match cargo_home.map(|h| cargo_hosts(&h)) {
            Some(hosts) if !hosts.is_empty() => {
                r.by_ecosystem.insert("cargo", hosts);
            }
            _ => r.notes.push(
                "cargo: no registry index is cached in this host's CARGO_HOME yet (run cargo \
                 once, or list the registry hosts in BUILDER_DEPS_EGRESS_WHITELIST)"
                    .into(),
            ),
        }
        let npm = command_output("npm", &["config", "get", "registry"]);
        r.add_urls("npm", npm.as_deref().unwrap_or(""));
        let go = command_output("go", &["env", "GOPROXY", "GOSUMDB"]);
        if let Some(go) = go {
            // GOPROXY is a list ("https://a,direct"); GOSUMDB is a name, maybe with a URL.
            let urls: Vec<String> = go
                .split([',', '|', '\n', ' '])
                .filter_map(|s| {
                    let s = s.trim();
                    if s.contains("://") {
                        Some(s.to_string())
                    } else if s.contains('.') {
                        Some(format!("https://{s}"))
                    } else {
                        None
                    }
                })
                .collect();
            r.add_urls("go", &urls.join("\n"));
        }
        let pip = command_output(
            "python3",
            &[
                "-c",
                "from pip._internal.models.index import PyPI as p\n\
                 import os\n\
                 print(os.environ.get('PIP_INDEX_URL') or p.simple_url)\n\
                 print('https://' + p.file_storage_domain)",
            ],
        );
        r.add_urls("pip", pip.as_deref().unwrap_or(""));
        r
    }

    fn add_urls(&mut self, ecosystem: &'static str, text: &str) {
        let hosts: Vec<HostPattern> = text.lines().filter_map(host_of_url).collect();
        if hosts.is_empty() {
            self.notes.push(format!(
                "{ecosystem}: the registry could not be found out from the host's configuration"
            ));
        } else {
            self.by_ecosystem.insert(ecosystem, hosts);
        }
    }

    /// The hosts a dependency phase for these languages may reach.
    pub fn for_languages(&self, languages: &[String]) -> Vec<HostPattern> {
        let mut hosts = self.extra.clone();
        for eco in languages.iter().filter_map(|l| ecosystem_of(l)) {
            for h in self.by_ecosystem.get(eco).into_iter().flatten() {
                if !hosts.contains(h) {
                    hosts.push(h.clone());
                }
            }
        }
        hosts
    }
}

/// The hosts of the sparse indexes this CARGO_HOME has used, and the download hosts their
/// `config.json` names (a mirror may serve downloads from another host).
fn cargo_hosts(cargo_home: &Path) -> Vec<HostPattern> {
    let mut hosts = Vec::new();
    let Ok(entries) = std::fs::read_dir(cargo_home.join("registry/index")) else {
        return hosts;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // `<host>-<16 hex digits>`, cargo's directory name for a registry.
        let Some((host, hash)) = name.rsplit_once('-') else {
            continue;
        };
        if hash.len() != 16 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let mut urls = vec![format!("https://{host}")];
        if let Ok(text) = std::fs::read_to_string(entry.path().join("config.json"))
            && let Ok(config) = serde_json::from_str::<serde_json::Value>(&text)
        {
            for key in ["dl", "api"] {
                if let Some(url) = config.get(key).and_then(|v| v.as_str()) {
                    urls.push(url.to_string());
                }
            }
        }
        for h in urls.iter().filter_map(|u| host_of_url(u)) {
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
    }
    hosts
}

/// `scheme://host[:port]/…` → the allow-list entry for that host (and port, when given).
fn host_of_url(url: &str) -> Option<HostPattern> {
    let url = url.trim();
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    if authority.is_empty() {
        return None;
    }
    // Ports 80/443 are the defaults of an entry without one.
    let entry = authority
        .strip_suffix(":443")
        .or_else(|| authority.strip_suffix(":80"))
        .unwrap_or(authority);
    parse_allow_list(entry).ok()?.into_iter().next()
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let out = child.wait_with_output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_allow_list_entries() {
        let h = |u: &str| host_of_url(u).map(|p| p.to_string());
        assert_eq!(
            h("https://registry.example/"),
            Some("registry.example".into())
        );
        assert_eq!(
            h("sparse+https://index.example:443/x"),
            Some("index.example".into())
        );
        assert_eq!(
            h("http://127.0.0.1:8081/index/"),
            Some("127.0.0.1:8081".into())
        );
        assert_eq!(
            h("https://user@mirror.example/simple"),
            Some("mirror.example".into())
        );
        assert_eq!(h("off"), None);
        assert_eq!(h("https:///"), None);
    }

    #[test]
    fn cargo_hosts_come_from_the_cached_indexes_and_their_config() {
        let home = tempfile::tempdir().unwrap();
        let idx = home
            .path()
            .join("registry/index/index.example-0123456789abcdef");
        std::fs::create_dir_all(&idx).unwrap();
        std::fs::write(
            idx.join("config.json"),
            r#"{"dl": "https://downloads.example/crates", "api": "https://index.example:443/api"}"#,
        )
        .unwrap();
        std::fs::create_dir_all(home.path().join("registry/index/not-a-registry")).unwrap();
        let hosts: Vec<String> = cargo_hosts(home.path())
            .iter()
            .map(|h| h.to_string())
            .collect();
        assert_eq!(hosts, ["index.example", "downloads.example"]);
        assert!(cargo_hosts(&home.path().join("missing")).is_empty());
    }

    #[test]
    fn languages_pick_their_ecosystems_and_the_extra_list_always_applies() {
        let mut r = RegistryHosts {
            extra: parse_allow_list("127.0.0.1:9000").unwrap(),
            ..Default::default()
        };
        r.by_ecosystem
            .insert("cargo", parse_allow_list("index.example").unwrap());
        r.by_ecosystem
            .insert("npm", parse_allow_list("npm.example").unwrap());
        let names = |hs: Vec<HostPattern>| hs.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(r.for_languages(&["rust".into()])),
            ["127.0.0.1:9000", "index.example"]
        );
        assert_eq!(
            names(r.for_languages(&["shell".into()])),
            ["127.0.0.1:9000"]
        );
    }
}
