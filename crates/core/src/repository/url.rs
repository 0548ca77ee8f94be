//! Which repository URLs builder accepts, where they point, and which of them an operator
//! allows. Pure: resolving a local path (symlinks, `..`) is the caller's, passed in as a
//! function, so this stays free of I/O.

use std::path::{Component, Path, PathBuf};

/// The repository property naming the forge API root that gets the repository's token.
pub const FORGE_API_BASE_PROPERTY: &str = "forge_api_base";

/// The setting that restricts repository URLs; named in refusals so an operator finds it.
pub const URL_ALLOW_VARIABLE: &str = "BUILDER_REPOSITORY_URL_ALLOW";

const EMBEDDED_CREDENTIAL: &str = "must not embed credentials (user:password@, tokens in a query \
string, percent-encoded userinfo); give them in the `credential` field";
const QUERY: &str = "must not have a query string or fragment (a token there would be stored and \
logged with the URL); give credentials in the `credential` field";
const BROKEN_SCHEME: &str = "names a scheme without `//` (git would read the scheme as a host); \
write scheme://host/path and give credentials in the `credential` field";
const GIT_PROTOCOL: &str = "git:// is not supported (unauthenticated and unencrypted; builder's git refuses it): use https:// or ssh://";

/// What a remote is reached through, for the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteScheme {
    Http,
    Https,
    Ssh,
}

impl RemoteScheme {
    fn parse(s: &str) -> Option<RemoteScheme> {
        match s {
            "http" => Some(RemoteScheme::Http),
            "https" => Some(RemoteScheme::Https),
            "ssh" => Some(RemoteScheme::Ssh),
            _ => None,
        }
    }

    fn default_port(self) -> u16 {
        match self {
            RemoteScheme::Http => 80,
            RemoteScheme::Https => 443,
            RemoteScheme::Ssh => 22,
        }
    }
}

/// Where an accepted repository URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlTarget {
    Remote {
        scheme: RemoteScheme,
        /// Lowercase; an IPv6 literal keeps its brackets.
        host: String,
        /// The port git will connect to (the scheme's default when the URL names none).
        port: u16,
    },
    /// An absolute path, as written (not resolved).
    Local(PathBuf),
}

/// Rejects URLs that carry credentials (they would end up in `.git/config`, logs and
/// events), that git would read differently from what they seem to say, or that builder's
/// git refuses anyway.
pub fn validate_repository_url(url: &str) -> Result<(), &'static str> {
    url_target(url).map(|_| ())
}

/// Validates `url` and says where it points.
pub fn url_target(url: &str) -> Result<UrlTarget, &'static str> {
    let url = url.trim();
    if url.is_empty() {
        return Err("must not be empty");
    }
    if url.len() > 2048 {
        return Err("must be at most 2048 characters");
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain spaces or control characters");
    }
    if url.starts_with('-') {
        return Err("must not start with '-'");
    }
    // git runs a remote helper for `<transport>::<address>`; an IPv6 literal inside a
    // `scheme://` URL is not that.
    if url.split("://").next().unwrap_or(url).contains("::") {
        return Err("must not use a git remote helper (`transport::address`)");
    }
    if url.contains('\\') {
        return Err("must not contain '\\'");
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        return match scheme {
            "file" => file_url(rest),
            "git" => Err(GIT_PROTOCOL),
            _ => match RemoteScheme::parse(scheme) {
                Some(scheme) => remote_url(scheme, rest),
                None => Err("scheme must be https, http, ssh or file"),
            },
        };
    }
    if url.starts_with('/') {
        return Ok(UrlTarget::Local(PathBuf::from(url)));
    }
    scp_like(url)
}

fn file_url(rest: &str) -> Result<UrlTarget, &'static str> {
    // git reads `file://host/path` and percent-escapes in its own ways; one spelling only.
    if !rest.starts_with('/') {
        return Err("file URLs must be file:///absolute/path");
    }
    if rest.contains(['%', '?', '#']) {
        return Err("file URLs must give the path as is (no %-escapes, query or fragment)");
    }
    Ok(UrlTarget::Local(PathBuf::from(rest)))
}

fn remote_url(scheme: RemoteScheme, rest: &str) -> Result<UrlTarget, &'static str> {
    if rest.contains(['?', '#']) {
        return Err(QUERY);
    }
    let authority = rest.split('/').next().unwrap_or("");
    // git decodes %-escapes in URLs before using them, so `user%3Apw@` is a password too.
    if authority.contains('%') {
        return Err(EMBEDDED_CREDENTIAL);
    }
    let host_port = match authority.rsplit_once('@') {
        None => authority,
        Some(_) if scheme != RemoteScheme::Ssh => return Err(EMBEDDED_CREDENTIAL),
        Some((user, host_port)) => {
            if !is_ssh_user(user) {
                return Err(EMBEDDED_CREDENTIAL);
            }
            host_port
        }
    };
    let (host, port) = split_host_port(host_port)?;
    Ok(UrlTarget::Remote {
        scheme,
        host,
        port: port.unwrap_or(scheme.default_port()),
    })
}

/// `[user@]host:path`, git's scp-like syntax (a ':' before any '/').
fn scp_like(url: &str) -> Result<UrlTarget, &'static str> {
    let head = url.split('/').next().unwrap_or("");
    if !head.contains(':') {
        return Err(
            "must be a URL (https://, ssh://, file://), scp-like user@host:path or an absolute path",
        );
    }
    if url.contains(['?', '#']) {
        return Err(QUERY);
    }
    let (user, rest) = match head.split_once('@') {
        // The first '@' before any '/': `user:password@host:path` has its ':' in the user.
        Some((user, _)) => (Some(user), &url[user.len() + 1..]),
        None => (None, url),
    };
    if let Some(user) = user
        && !is_ssh_user(user)
    {
        return Err(EMBEDDED_CREDENTIAL);
    }
    let Some((host, path)) = rest.split_once(':') else {
        return Err(EMBEDDED_CREDENTIAL);
    };
    let lower = host.to_ascii_lowercase();
    if user.is_none() && is_scheme_name(&lower) {
        return Err(BROKEN_SCHEME);
    }
    if path.is_empty() {
        return Err("scp-like URLs need a path after the ':'");
    }
    if host.is_empty() || !host.chars().all(is_host_char) {
        return Err("has no valid host");
    }
    Ok(UrlTarget::Remote {
        scheme: RemoteScheme::Ssh,
        host: lower,
        port: RemoteScheme::Ssh.default_port(),
    })
}

fn is_scheme_name(s: &str) -> bool {
    matches!(
        s,
        "http" | "https" | "ssh" | "git" | "file" | "git+ssh" | "ssh+git" | "ftp" | "ftps"
    )
}

/// An ssh login name: nothing that could be a password or hide one.
fn is_ssh_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// `host[:port]` or `[v6]:port`, the host lowercased.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), &'static str> {
    const BAD_HOST: &str = "has no valid host";
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or(BAD_HOST)?;
        if addr.is_empty()
            || !addr
                .chars()
                .all(|c| c.is_ascii_hexdigit() || ".:".contains(c))
        {
            return Err(BAD_HOST);
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(BAD_HOST)?),
        };
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if host.is_empty() || !host.chars().all(is_host_char) {
            return Err(BAD_HOST);
        }
        (host.to_owned(), port)
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.chars().all(|c| c.is_ascii_digit()) => Some(n),
            _ => return Err("has an invalid port"),
        },
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// `localhost`, 127.0.0.0/8 or `::1` (brackets optional): traffic that never leaves this
/// machine, the only place a secret may travel over plain http.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Whether a password or token given for `url` would cross the network unencrypted: a
/// plain `http://` remote that is not on this machine.
pub fn credential_travels_in_clear(url: &str) -> bool {
    matches!(
        url_target(url),
        Ok(UrlTarget::Remote { scheme: RemoteScheme::Http, ref host, .. }) if !is_loopback_host(host)
    )
}

/// Checks a [`FORGE_API_BASE_PROPERTY`] value: an http(s) root without credentials, query or
/// fragment, and https unless it is on this machine (the repository's token goes there).
pub fn validate_forge_api_base(base: &str) -> Result<(), &'static str> {
    let base = base.trim();
    let Some((scheme, rest)) = base.split_once("://") else {
        return Err("must be an https:// URL");
    };
    let scheme = match RemoteScheme::parse(scheme) {
        Some(s @ (RemoteScheme::Http | RemoteScheme::Https)) => s,
        _ => return Err("must be an https:// URL"),
    };
    if base.chars().any(|c| c.is_control() || c.is_whitespace()) || base.contains('\\') {
        return Err("must not contain spaces, control characters or '\\'");
    }
    if rest.contains(['?', '#']) {
        return Err("must not have a query string or fragment");
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains(['@', '%']) {
        return Err("must not embed credentials; the repository's credential is sent");
    }
    let (host, _) = split_host_port(authority).map_err(|_| "must name a valid host")?;
    if scheme == RemoteScheme::Http && !is_loopback_host(&host) {
        return Err(
            "must be https:// (the repository's token would travel unencrypted); plain http:// only to localhost, 127.0.0.0/8 or [::1]",
        );
    }
    Ok(())
}

/// One entry of [`URL_ALLOW_VARIABLE`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum AllowEntry {
    Remote {
        scheme: RemoteScheme,
        host: HostPattern,
        port: PortPattern,
    },
    /// Local repositories under this absolute path.
    Local(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com`: any host below `example.com` (not `example.com` itself).
    Below(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    Any,
    /// No port in the entry: the scheme's default port only.
    Default,
    Exact(u16),
}

/// The operator's allow-list of repository URLs: `https://github.com`,
/// `ssh://*.corp.example`, `http://127.0.0.1:8080`, `https://*:*`, `file:///srv/git`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlAllowList {
    entries: Vec<AllowEntry>,
}

impl UrlAllowList {
    /// Parses a comma-separated list; `None` when it has no entries (no restriction).
    pub fn parse(list: &str) -> Result<Option<UrlAllowList>, String> {
        let entries = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| parse_entry(e).map_err(|why| format!("{e:?}: {why}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((!entries.is_empty()).then_some(UrlAllowList { entries }))
    }

    fn allows_remote(&self, scheme: RemoteScheme, host: &str, port: u16) -> bool {
        self.entries.iter().any(|e| match e {
            AllowEntry::Local(_) => false,
            AllowEntry::Remote {
                scheme: s,
                host: h,
                port: p,
            } => {
                let host_ok = match h {
                    HostPattern::Any => true,
                    HostPattern::Exact(x) => x == host,
                    HostPattern::Below(suffix) => host
                        .strip_suffix(suffix.as_str())
                        .is_some_and(|sub| !sub.is_empty()),
                };
                let port_ok = match p {
                    PortPattern::Any => true,
                    PortPattern::Default => port == scheme.default_port(),
                    PortPattern::Exact(x) => *x == port,
                };
                *s == scheme && host_ok && port_ok
            }
        })
    }

    fn local_roots(&self) -> impl Iterator<Item = &Path> {
        self.entries.iter().filter_map(|e| match e {
            AllowEntry::Local(p) => Some(p.as_path()),
            AllowEntry::Remote { .. } => None,
        })
    }
}

fn parse_entry(entry: &str) -> Result<AllowEntry, &'static str> {
    const FORM: &str = "must be scheme://host[:port] (https, http, ssh; host may be * or *.domain, port may be *) or file:///absolute/path";
    let (scheme, rest) = entry.split_once("://").ok_or(FORM)?;
    if scheme == "file" {
        let path = Path::new(rest);
        let plain = path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !rest.starts_with('/') || !plain || rest.contains(['%', '?', '#']) {
            return Err(
                "file entries must be file:///absolute/path without '.', '..' or %-escapes",
            );
        }
        return Ok(AllowEntry::Local(path.to_path_buf()));
    }
    let scheme = RemoteScheme::parse(scheme).ok_or(FORM)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '@', '?', '#', '%']) {
        return Err("remote entries name a scheme, host and port only (no path or user)");
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, "*")) => (h, PortPattern::Any),
        Some((h, p)) if !h.ends_with(':') && !p.contains(']') => {
            let n = p.parse::<u16>().ok().filter(|n| *n > 0).ok_or(FORM)?;
            (h, PortPattern::Exact(n))
        }
        _ => (rest, PortPattern::Default),
    };
    let host = host.to_ascii_lowercase();
    let host = if host == "*" {
        HostPattern::Any
    } else if let Some(domain) = host.strip_prefix("*.") {
        if domain.is_empty() || !domain.chars().all(is_host_char) {
            return Err(FORM);
        }
        HostPattern::Below(format!(".{domain}"))
    } else {
        let (h, p) = split_host_port(&host).map_err(|_| FORM)?;
        if p.is_some() {
            return Err(FORM);
        }
        HostPattern::Exact(h)
    };
    Ok(AllowEntry::Remote { scheme, host, port })
}

/// What repository URLs may point at: never into builder's own state (data directory,
/// working copies, caches, keys), and only where the operator's allow-list says, if set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    protected_roots: Vec<PathBuf>,
    allow: Option<UrlAllowList>,
}

impl UrlPolicy {
    pub fn new(protected_roots: Vec<PathBuf>, allow: Option<UrlAllowList>) -> UrlPolicy {
        UrlPolicy {
            protected_roots,
            allow,
        }
    }

    /// Whether `url` may be registered or probed. `resolve` gives a path's real location:
    /// symlinks followed, `..` applied, and for a path that does not exist yet its nearest
    /// existing ancestor resolved with the rest appended.
    pub fn check(&self, url: &str, resolve: &dyn Fn(&Path) -> PathBuf) -> Result<(), String> {
        let target = url_target(url).map_err(str::to_owned)?;
        match target {
            UrlTarget::Local(path) => {
                // git also opens `<path>.git` when `<path>` is not a repository.
                let mut dotted = path.clone().into_os_string();
                dotted.push(".git");
                let candidates = [resolve(&path), resolve(Path::new(&dotted))];
                for root in &self.protected_roots {
                    let root = resolve(root);
                    if candidates.iter().any(|c| c.starts_with(&root)) {
                        return Err(format!(
                            "points into builder's own state ({}: data directory, working copies, caches or keys); register the repository's own location",
                            root.display()
                        ));
                    }
                }
                if let Some(allow) = &self.allow {
                    let allowed = allow
                        .local_roots()
                        .map(resolve)
                        .any(|root| candidates.iter().all(|c| c.starts_with(&root)));
                    if !allowed {
                        return Err(format!(
                            "this local path is not allowed by {URL_ALLOW_VARIABLE}"
                        ));
                    }
                }
            }
            UrlTarget::Remote { scheme, host, port } => {
                if let Some(allow) = &self.allow
                    && !allow.allows_remote(scheme, &host, port)
                {
                    return Err(format!(
                        "{host}:{port} is not allowed by {URL_ALLOW_VARIABLE}"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "url_tests.rs"]
mod tests;
