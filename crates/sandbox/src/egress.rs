//! The network egress allow-list: host patterns (`SANDBOX_NETWORK_EGRESS_WHITELIST`), the
//! policy the egress proxy applies, and what a refused connection looks like.
//!
//! Patterns: `crates.io` (that host exactly), `*.npmjs.org` (any proper subdomain, not
//! `npmjs.org` itself), `127.0.0.1`, `[::1]`, each with an optional `:port`. Host names are
//! matched case-insensitively with a trailing dot ignored. A pattern without a port allows
//! ports 80 and 443 only; any other port must be named (`registry.example:8443`).
//!
//! DNS-rebinding guard: the proxy runs on the host, outside the sandbox, so it can reach
//! the host's loopback services (builder's own API, PostgreSQL), the private network and
//! cloud metadata endpoints (169.254.169.254). An allowed *name* is therefore resolved by
//! the proxy itself and every resolved address that is loopback, private, link-local,
//! shared (CGNAT), multicast or otherwise non-public is dropped, unless that address is on
//! the list as an IP literal, or the name is `localhost` and `localhost` itself is on the
//! list (loopback addresses only). The proxy connects to the checked address, never
//! re-resolving the name, so a record that changes between check and connect cannot
//! redirect it. An IP literal on the list is trusted as listed, whatever its range.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// Ports a pattern without an explicit port allows.
pub const DEFAULT_EGRESS_PORTS: [u16; 2] = [80, 443];

/// One entry of the egress allow-list. Parse with [`HostPattern::from_str`] or
/// [`parse_allow_list`]; `Display` gives the normalised form back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    host: PatternHost,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PatternHost {
    /// A host name, exactly (lower case, no trailing dot).
    Name(String),
    /// `*.suffix`: proper subdomains of `suffix`.
    Subdomains(String),
    Ip(IpAddr),
}

/// A bad entry of the allow-list; every variant names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowListError {
    #[error(
        "egress allow-list entry `{entry}` is not a host: give a host name, `*.domain` or an \
         IP address with an optional `:port` (no scheme, user or path)"
    )]
    NotAHost { entry: String },
    #[error("egress allow-list entry `{entry}` has an invalid port (expected 1-65535)")]
    BadPort { entry: String },
    #[error("egress allow-list entry `{entry}` is not a valid host name: {reason}")]
    BadHost { entry: String, reason: &'static str },
    #[error("egress allow-list entry `{entry}` is not a valid wildcard: {reason}")]
    BadWildcard { entry: String, reason: &'static str },
}

/// Parses `SANDBOX_NETWORK_EGRESS_WHITELIST`: entries separated by commas and/or
/// whitespace; empty entries are ignored, duplicates dropped, order kept. An empty string
/// is an empty list (no network).
pub fn parse_allow_list(s: &str) -> Result<Vec<HostPattern>, AllowListError> {
    let mut out: Vec<HostPattern> = Vec::new();
    for entry in s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty())
    {
        let p = HostPattern::from_str(entry)?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

impl FromStr for HostPattern {
    type Err = AllowListError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let e = entry.trim();
        let err_host = |reason| AllowListError::BadHost {
            entry: entry.to_string(),
            reason,
        };
        if e.contains("://") || e.contains('/') || e.contains('@') {
            return Err(AllowListError::NotAHost {
                entry: entry.to_string(),
            });
        }
        let (host, port) = split_host_port(e).ok_or_else(|| err_host("unbalanced brackets"))?;
        let port = match port {
            None => None,
            Some(p) => Some(parse_port(p).ok_or_else(|| AllowListError::BadPort {
                entry: entry.to_string(),
            })?),
        };
        let host = host.to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host);
        if host.is_empty() {
            return Err(err_host("empty host"));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Self {
                host: PatternHost::Ip(ip.to_canonical()),
                port,
            });
        }
        if e.starts_with('[') {
            return Err(err_host("not an IPv6 address inside brackets"));
        }
        if let Some(suffix) = host.strip_prefix("*.") {
            let bad = |reason| AllowListError::BadWildcard {
                entry: entry.to_string(),
                reason,
            };
            if suffix.contains('*') {
                return Err(bad("only one leading `*.` is supported"));
            }
            check_name(suffix).map_err(bad)?;
            if !suffix.contains('.') {
                return Err(bad(
                    "it would match a whole top-level domain; name at least two labels",
                ));
            }
            return Ok(Self {
                host: PatternHost::Subdomains(suffix.to_string()),
                port,
            });
        }
        if host.contains('*') {
            return Err(AllowListError::BadWildcard {
                entry: entry.to_string(),
                reason: "only a leading `*.` is supported",
            });
        }
        check_name(host).map_err(err_host)?;
        Ok(Self {
            host: PatternHost::Name(host.to_string()),
            port,
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.port) {
            (PatternHost::Name(n), _) => f.write_str(n)?,
            (PatternHost::Subdomains(s), _) => write!(f, "*.{s}")?,
            (PatternHost::Ip(IpAddr::V6(ip)), Some(_)) => write!(f, "[{ip}]")?,
            (PatternHost::Ip(ip), _) => write!(f, "{ip}")?,
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

impl HostPattern {
    /// Whether a connection to `host:port` is on this entry (`host` as a client sent it:
    /// any case, optional trailing dot, IPv6 with or without brackets). Only the name is
    /// checked here; the proxy also checks the addresses a name resolves to.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        match Target::parse(host) {
            Some(t) => self.matches_target(&t, port),
            None => false,
        }
    }

    fn port_ok(&self, port: u16) -> bool {
        match self.port {
            Some(p) => p == port,
            None => DEFAULT_EGRESS_PORTS.contains(&port),
        }
    }

    fn matches_target(&self, t: &Target, port: u16) -> bool {
        if !self.port_ok(port) {
            return false;
        }
        match (&self.host, t) {
            (PatternHost::Name(n), Target::Name(h)) => n == h,
            (PatternHost::Subdomains(s), Target::Name(h)) => h
                .strip_suffix(s.as_str())
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
            (PatternHost::Ip(a), Target::Ip(b)) => a == b,
            _ => false,
        }
    }

    /// True for entries naming loopback (`localhost`, `127.x`, `::1`): the sandbox's own
    /// loopback cannot then be exempted from the proxy (see `NO_PROXY` in `bwrap.rs`).
    pub(crate) fn is_loopback(&self) -> bool {
        match &self.host {
            PatternHost::Name(n) => n == "localhost",
            PatternHost::Ip(ip) => ip.is_loopback(),
            PatternHost::Subdomains(_) => false,
        }
    }
}

/// `host[:port]`, `[v6][:port]` or a bare IPv6 address.
fn split_host_port(e: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = e.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            a => Some((host, Some(a.strip_prefix(':').unwrap_or("x")))),
        };
    }
    if e.contains(']') {
        return None;
    }
    match e.matches(':').count() {
        0 => Some((e, None)),
        1 => {
            let (h, p) = e.split_once(':')?;
            Some((h, Some(p)))
        }
        _ => Some((e, None)),
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|p| *p != 0)
}

/// A DNS name in its ASCII form (IDNs as punycode).
fn check_name(n: &str) -> Result<(), &'static str> {
    if n.is_empty() {
        return Err("empty host");
    }
    if n.len() > 253 {
        return Err("longer than 253 characters");
    }
    if !n.is_ascii() {
        return Err("not ASCII (give internationalised names in their xn-- form)");
    }
    for label in n.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("empty label or label longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("only letters, digits, `-`, `_` and `.` are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with `-`");
        }
    }
    // `127.1`, `2130706433`, `0x7f.1`: the resolver reads these as addresses.
    let last = n.rsplit('.').next().unwrap_or(n);
    if last.bytes().all(|b| b.is_ascii_digit())
        || (last.starts_with("0x") && last[2..].bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err("looks like a numeric address but is not a valid IP address");
    }
    Ok(())
}

/// A connection target as a client named it, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Name(String),
    Ip(IpAddr),
}

impl Target {
    /// `None` when `host` is neither an IP address nor a valid host name.
    pub fn parse(host: &str) -> Option<Self> {
        let h = host.to_ascii_lowercase();
        let h = h
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .unwrap_or(&h);
        let h = h.strip_suffix('.').unwrap_or(h);
        if let Ok(ip) = h.parse::<IpAddr>() {
            return Some(Self::Ip(ip.to_canonical()));
        }
        check_name(h).ok()?;
        Some(Self::Name(h.to_string()))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Addresses the proxy must not reach through a *name*: everything that is not plainly
/// public unicast. IPv6 forms that embed an IPv4 address are judged by that address.
pub(crate) fn is_internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded_v4 =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return true;
    }
    match s[0] {
        0xfc00..=0xfdff => return true, // unique local
        0xfe80..=0xfeff => return true, // link-local and the old site-local
        _ => {}
    }
    // NAT64 well-known prefix 64:ff9b::/96 and 6to4 2002::/16 reach IPv4 addresses.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_internal_v4(embedded_v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return is_internal_v4(embedded_v4(s[1], s[2]));
    }
    // IPv4-compatible ::a.b.c.d (deprecated): never public.
    s[..6] == [0; 6]
}

/// Why the proxy refused one connection; collected per run in `ExecOutcome::egress_refused`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EgressRefusal {
    /// The host as the client named it (lower case).
    pub host: String,
    pub port: u16,
    pub reason: String,
}

impl fmt::Display for EgressRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.host, self.port, self.reason)
    }
}

/// Refusals of one run; at most [`MAX_REFUSALS_KEPT`] are kept, the rest are counted.
#[derive(Debug, Clone, Default)]
pub(crate) struct RefusalLog(Arc<Mutex<(Vec<EgressRefusal>, u64)>>);

/// Refused connections listed per run; a command retrying in a loop is summarised.
pub const MAX_REFUSALS_KEPT: usize = 100;

impl RefusalLog {
    pub fn record(&self, r: EgressRefusal) {
        tracing::info!(host = %r.host, port = r.port, reason = %r.reason, "sandbox egress refused");
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.0.len() < MAX_REFUSALS_KEPT {
            g.0.push(r);
        } else {
            g.1 += 1;
        }
    }

    /// The kept refusals and how many more were not kept.
    pub fn take(&self) -> (Vec<EgressRefusal>, u64) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut g.0), std::mem::take(&mut g.1))
    }
}

/// The allow-list as the proxy applies it.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    allow: Vec<HostPattern>,
}

impl Policy {
    pub fn new(allow: Vec<HostPattern>) -> Self {
        Self { allow }
    }

    /// The name check, before any resolution.
    pub fn check_name(&self, t: &Target, port: u16) -> Result<(), String> {
        if self.allow.iter().any(|p| p.matches_target(t, port)) {
            return Ok(());
        }
        let host_listed = self
            .allow
            .iter()
            .any(|p| p.matches_target(t, p.port.unwrap_or(DEFAULT_EGRESS_PORTS[0])));
        Err(if host_listed {
            format!(
                "port {port} is not allowed for this host (an entry without a port allows \
                 80 and 443; name the port, e.g. `{t}:{port}`)"
            )
        } else {
            "host not on the egress allow-list (SANDBOX_NETWORK_EGRESS_WHITELIST)".to_string()
        })
    }

    /// The addresses the proxy may connect to for an allowed target: for an IP literal that
    /// address; for a name, the resolved addresses the rebinding guard lets through.
    pub fn filter_resolved(
        &self,
        t: &Target,
        port: u16,
        resolved: &[IpAddr],
    ) -> Result<Vec<SocketAddr>, String> {
        if let Target::Ip(ip) = t {
            return Ok(vec![SocketAddr::new(*ip, port)]);
        }
        let localhost_listed = *t == Target::Name("localhost".into());
        let mut ok = Vec::new();
        let mut internal = Vec::new();
        for ip in resolved {
            let ip = ip.to_canonical();
            let listed = self
                .allow
                .iter()
                .any(|p| p.matches_target(&Target::Ip(ip), port));
            if !is_internal(ip) || listed || (localhost_listed && ip.is_loopback()) {
                ok.push(SocketAddr::new(ip, port));
            } else {
                internal.push(ip.to_string());
            }
        }
        if !ok.is_empty() {
            return Ok(ok);
        }
        if internal.is_empty() {
            return Err("the name did not resolve to any address".into());
        }
        Err(format!(
            "the name resolves only to internal address(es) {} (DNS-rebinding guard; put the \
             address itself on the allow-list to allow it)",
            internal.join(", ")
        ))
    }
}

/// Turns the sandbox's network on, through the egress proxy, for the hosts in `allow`
/// (see [`crate::BwrapRuntime::with_egress`]). An empty `allow` keeps the network off.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressConfig {
    pub allow: Vec<HostPattern>,
    /// The program that runs the in-sandbox bridge ([`crate::run_net_bridge`]): the helper
    /// program (`builder`'s hidden subcommand, or `sandbox-helper`) with
    /// `bridge_args_prefix` ending in `net-bridge`. Bound read-only into the sandbox at the
    /// same path.
    pub bridge_program: PathBuf,
    /// Arguments put before the bridge's own (`--listen ADDR --connect SOCKET`).
    pub bridge_args_prefix: Vec<String>,
}

impl EgressConfig {
    /// The allow-list with the bridge run by the helper program's `net-bridge` subcommand
    /// (the same program that applies Landlock, see [`crate::helper_main`]).
    pub fn with_helper(allow: Vec<HostPattern>, helper: &crate::HelperProgram) -> Self {
        Self {
            allow,
            bridge_program: helper.program.clone(),
            bridge_args_prefix: helper.net_bridge_prefix(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn exact_wildcard_ip_and_port_matching() {
        let crates = p("crates.io");
        assert!(crates.matches("crates.io", 443));
        assert!(crates.matches("CRATES.IO.", 80));
        assert!(
            !crates.matches("crates.io", 8080),
            "only 80/443 without a port"
        );
        assert!(!crates.matches("static.crates.io", 443));
        assert!(!crates.matches("evilcrates.io", 443));
        assert!(!crates.matches("crates.io.evil.com", 443));

        let npm = p("*.npmjs.org");
        assert!(npm.matches("registry.npmjs.org", 443));
        assert!(npm.matches("a.b.NPMJS.org.", 443));
        assert!(!npm.matches("npmjs.org", 443), "proper subdomains only");
        assert!(!npm.matches("evilnpmjs.org", 443));
        assert!(!npm.matches(".npmjs.org", 443));

        let reg = p("Registry.Example.:8443");
        assert_eq!(reg.to_string(), "registry.example:8443");
        assert!(reg.matches("registry.example", 8443));
        assert!(!reg.matches("registry.example", 443));

        let lo = p("127.0.0.1:5000");
        assert!(lo.matches("127.0.0.1", 5000));
        assert!(lo.matches("[::ffff:127.0.0.1]", 5000), "v4-mapped form");
        assert!(!lo.matches("127.0.0.1", 5001));
        assert!(!lo.matches("localhost", 5000), "a literal is not a name");

        let v6 = p("[::1]:8080");
        assert_eq!(v6.to_string(), "[::1]:8080");
        assert!(v6.matches("[::1]", 8080));
        assert!(v6.matches("::1", 8080));
        assert_eq!(p("::1").to_string(), "::1");
        assert!(p("::1").matches("[::1]", 443));
        // A wildcard never matches an address, a name never an IP entry.
        assert!(!p("*.example.com").matches("93.184.216.34", 443));
        assert!(p("*.example.com").matches("www.example.com", 80));
    }

    #[test]
    fn allow_list_parsing_and_errors() {
        let l = parse_allow_list(
            " crates.io,*.npmjs.org  registry.example:8443,\n\t127.0.0.1:5000,,crates.io ",
        )
        .unwrap();
        let shown: Vec<String> = l.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "crates.io",
                "*.npmjs.org",
                "registry.example:8443",
                "127.0.0.1:5000"
            ]
        );
        assert_eq!(parse_allow_list("").unwrap(), vec![]);
        assert_eq!(parse_allow_list(" , ").unwrap(), vec![]);

        let err = |s: &str| parse_allow_list(s).unwrap_err();
        assert!(
            matches!(err("ok.example, https://crates.io"), AllowListError::NotAHost { entry } if entry == "https://crates.io")
        );
        assert!(matches!(
            err("crates.io/api"),
            AllowListError::NotAHost { .. }
        ));
        assert!(matches!(
            err("user@crates.io"),
            AllowListError::NotAHost { .. }
        ));
        for bad_port in [
            "crates.io:0",
            "crates.io:65536",
            "crates.io:",
            "crates.io:http",
            "[::1]x",
        ] {
            assert!(
                matches!(err(bad_port), AllowListError::BadPort { entry } if entry == bad_port),
                "{bad_port}"
            );
        }
        for bad_host in [
            "bad_host!.com",
            "-a.com",
            "a..com",
            "127.1",
            "2130706433",
            "x.0x7f",
            "héllo.com",
            "[crates.io]",
            ":443",
            "[::1",
        ] {
            assert!(
                matches!(err(bad_host), AllowListError::BadHost { ref entry, .. } if entry == bad_host),
                "{bad_host}: {:?}",
                err(bad_host)
            );
        }
        for bad_wild in ["*", "*.com", "a.*.com", "*.*.com", "foo*.com"] {
            assert!(
                matches!(
                    err(bad_wild),
                    AllowListError::BadWildcard { .. } | AllowListError::BadHost { .. }
                ),
                "{bad_wild}"
            );
        }
        assert!(matches!(err("*.com"), AllowListError::BadWildcard { .. }));
        let msg = err("evil com:99999").to_string();
        assert!(msg.contains("`com:99999`"), "{msg}");
    }

    #[test]
    fn internal_address_classification() {
        for a in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "2002:a00:1::",
            "::127.0.0.1",
        ] {
            assert!(is_internal(a.parse().unwrap()), "{a}");
        }
        for a in [
            "1.1.1.1",
            "151.101.1.1",
            "2606:4700::1111",
            "64:ff9b::101:101",
            "2002:101:101::",
        ] {
            assert!(!is_internal(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn policy_refusals_and_rebinding_guard() {
        let pol = Policy::new(
            parse_allow_list("crates.io *.npmjs.org 10.0.0.5 localhost:9000 127.0.0.1:5000")
                .unwrap(),
        );
        let name = |s: &str| Target::parse(s).unwrap();
        let ips = |v: &[&str]| {
            v.iter()
                .map(|s| s.parse().unwrap())
                .collect::<Vec<IpAddr>>()
        };

        assert!(pol.check_name(&name("crates.io"), 443).is_ok());
        let e = pol.check_name(&name("evil.example"), 443).unwrap_err();
        assert!(e.contains("not on the egress allow-list"), "{e}");
        let e = pol.check_name(&name("crates.io"), 22).unwrap_err();
        assert!(e.contains("port 22"), "{e}");
        assert!(pol.check_name(&name("127.0.0.1"), 5000).is_ok());
        assert!(pol.check_name(&name("127.0.0.1"), 5432).is_err());

        // A public resolution passes; internal ones are dropped.
        assert_eq!(
            pol.filter_resolved(&name("crates.io"), 443, &ips(&["127.0.0.1", "151.101.1.1"]))
                .unwrap(),
            vec!["151.101.1.1:443".parse().unwrap()]
        );
        for internal in [
            "127.0.0.1",
            "169.254.169.254",
            "192.168.0.10",
            "::1",
            "fd00::1",
        ] {
            let e = pol
                .filter_resolved(&name("registry.npmjs.org"), 443, &ips(&[internal]))
                .unwrap_err();
            assert!(e.contains("internal") && e.contains("DNS-rebinding"), "{e}");
        }
        // ...unless the address itself is listed.
        assert!(
            pol.filter_resolved(&name("crates.io"), 443, &ips(&["10.0.0.5"]))
                .is_ok()
        );
        // `127.0.0.1:5000` listed lets a name reach it only on that port.
        assert!(
            pol.filter_resolved(&name("crates.io"), 443, &ips(&["127.0.0.1"]))
                .is_err()
        );
        // `localhost` listed: loopback allowed for that name, not the private network.
        assert!(
            pol.filter_resolved(&name("localhost"), 9000, &ips(&["127.0.0.1", "::1"]))
                .is_ok()
        );
        assert!(
            pol.filter_resolved(&name("localhost"), 9000, &ips(&["10.9.9.9"]))
                .is_err()
        );
        // An IP literal that passed the name check is used as is.
        assert_eq!(
            pol.filter_resolved(&name("127.0.0.1"), 5000, &[]).unwrap(),
            vec!["127.0.0.1:5000".parse().unwrap()]
        );
        assert!(pol.filter_resolved(&name("crates.io"), 443, &[]).is_err());
    }

    #[test]
    fn refusal_log_caps() {
        let log = RefusalLog::default();
        for i in 0..(MAX_REFUSALS_KEPT + 5) {
            log.record(EgressRefusal {
                host: format!("h{i}"),
                port: 443,
                reason: "x".into(),
            });
        }
        let (kept, more) = log.take();
        assert_eq!((kept.len(), more), (MAX_REFUSALS_KEPT, 5));
        assert_eq!(log.take(), (vec![], 0));
    }
}
