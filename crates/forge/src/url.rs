//! Repository-URL parsing and URL building. Error messages never echo the URL itself, since a
//! caller might have put a credential in it.

use crate::ForgeError;

/// Host and path segments of a git remote URL, credentials refused, `.git` stripped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RepoLocation {
    /// `host` or `host:port`.
    pub host: String,
    pub segments: Vec<String>,
}

/// Parses `https://host/a/b(.git)`, `http://…`, `ssh://[user@]host[:port]/a/b`,
/// `git://host/a/b` and scp-like `user@host:a/b`.
pub(crate) fn parse_repo_url(url: &str) -> Result<RepoLocation, ForgeError> {
    let url = url.trim();
    let (authority, path) = if let Some((scheme, rest)) = url.split_once("://") {
        if !matches!(scheme, "https" | "http" | "ssh" | "git") {
            return Err(invalid(
                "repository URL scheme must be https, http, ssh or git",
            ));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        (authority, path)
    } else {
        // scp-like: [user@]host:path
        match url.split_once(':') {
            Some((authority, path)) if !authority.contains('/') => {
                (authority, path.strip_prefix('/').unwrap_or(path))
            }
            _ => {
                return Err(invalid(
                    "repository URL is neither a URL nor user@host:path",
                ));
            }
        }
    };
    let host = match authority.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => {
            return Err(invalid("repository URL must not embed credentials"));
        }
        Some((_, host)) => host,
        None => authority,
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
    {
        return Err(invalid("repository URL has no valid host"));
    }
    if path.contains(['?', '#']) {
        return Err(invalid("repository URL must not have a query or fragment"));
    }
    let path = path.strip_suffix('/').unwrap_or(path);
    let path = path.strip_suffix(".git").unwrap_or(path);
    let segments: Vec<String> = path.split('/').map(str::to_owned).collect();
    if segments.iter().any(|s| !valid_segment(s)) {
        return Err(invalid(
            "repository URL path must be owner/name segments of letters, digits, '.', '-', '_'",
        ));
    }
    Ok(RepoLocation {
        host: host.to_owned(),
        segments,
    })
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Exactly `owner/name`, as GitHub, Gitea and Bitbucket (`workspace/repo_slug`) address them.
pub(crate) fn owner_and_name(loc: &RepoLocation) -> Result<(String, String), ForgeError> {
    match loc.segments.as_slice() {
        [owner, name] => Ok((owner.clone(), name.clone())),
        _ => Err(invalid("repository URL path must be exactly owner/name")),
    }
}

/// Checks an API root: http(s), no credentials, no query; returns it without a trailing `/`.
/// The token goes there as a bearer header, so plain `http://` is refused unless the host is
/// this machine (localhost, 127.0.0.0/8, [::1]).
pub(crate) fn check_api_base(base: &str) -> Result<String, ForgeError> {
    let base = base.trim().trim_end_matches('/');
    let Some((scheme, rest)) = base.split_once("://") else {
        return Err(invalid("API base must be an http(s) URL"));
    };
    if !matches!(scheme, "https" | "http") {
        return Err(invalid("API base must be an http(s) URL"));
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains(['@', '%', '\\']) {
        return Err(invalid("API base must have a host and no credentials"));
    }
    if rest.contains(['?', '#']) {
        return Err(invalid("API base must not have a query or fragment"));
    }
    if scheme == "http" && !is_loopback_authority(authority) {
        return Err(invalid(
            "API base must be https:// (the token would travel unencrypted); plain http:// is only allowed to localhost, 127.0.0.0/8 or [::1]",
        ));
    }
    Ok(base.to_owned())
}

/// `host[:port]` whose host is `localhost`, in 127.0.0.0/8 or `[::1]`.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, port)) if port.is_empty() || port.starts_with(':') => addr,
            _ => return false,
        },
        None => authority.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `scheme://authority` of an absolute URL.
pub(crate) fn origin(url: &str) -> &str {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find('/').unwrap_or(rest.len());
            &url[..scheme.len() + 3 + end]
        }
        None => url,
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (so `/` becomes `%2F`).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A branch name fit to send: git's own rules, roughly (no control characters, spaces,
/// `..`, `~^:?*[\`, leading `-`).
pub(crate) fn check_branch(what: &str, branch: &str) -> Result<(), ForgeError> {
    let bad = branch.is_empty()
        || branch.starts_with(['-', '/'])
        || branch.ends_with(['/', '.'])
        || branch.contains("..")
        || branch.contains("//")
        || branch.contains("@{")
        || branch.ends_with(".lock")
        || branch
            .chars()
            .any(|c| c.is_control() || c == ' ' || "~^:?*[\\\"".contains(c));
    if bad {
        return Err(invalid(&format!("{what} is not a valid branch name")));
    }
    Ok(())
}

fn invalid(msg: &str) -> ForgeError {
    ForgeError::InvalidInput(msg.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_remote_forms() {
        for url in [
            "https://github.com/acme/widget.git",
            "https://github.com/acme/widget",
            "https://github.com/acme/widget/",
            "ssh://git@github.com/acme/widget.git",
            "git@github.com:acme/widget.git",
            "http://git@github.com/acme/widget",
        ] {
            let loc = parse_repo_url(url).unwrap();
            assert_eq!(loc.host, "github.com", "{url}");
            assert_eq!(loc.segments, vec!["acme", "widget"], "{url}");
        }
        let loc = parse_repo_url("ssh://git@gitlab.example:2222/grp/sub/proj.git").unwrap();
        assert_eq!(loc.host, "gitlab.example:2222");
        assert_eq!(loc.segments, vec!["grp", "sub", "proj"]);
    }

    #[test]
    fn refuses_credentials_without_echoing_them() {
        let err = parse_repo_url("https://bob:s3cret-token@github.com/acme/widget").unwrap_err();
        assert!(matches!(err, ForgeError::InvalidInput(_)));
        assert!(!err.to_string().contains("s3cret-token"));
    }

    #[test]
    fn refuses_odd_paths() {
        for url in [
            "https://github.com/acme/../widget",
            "https://github.com/acme/wid get",
            "https://github.com/acme/widget?x=1",
            "https://github.com//widget",
            "ftp://github.com/acme/widget",
            "/local/path",
        ] {
            assert!(parse_repo_url(url).is_err(), "{url}");
        }
        let loc = parse_repo_url("https://github.com/a/b/c").unwrap();
        assert!(owner_and_name(&loc).is_err());
    }

    #[test]
    fn encodes_and_checks() {
        assert_eq!(encode("grp/sub/proj"), "grp%2Fsub%2Fproj");
        assert_eq!(encode("a b\"&"), "a%20b%22%26");
        assert_eq!(origin("http://127.0.0.1:9/api/v4/x"), "http://127.0.0.1:9");
        assert_eq!(
            check_api_base("http://127.0.0.1:9/api/v4/").unwrap(),
            "http://127.0.0.1:9/api/v4"
        );
        assert!(check_api_base("https://u:p@host/api").is_err());
        assert!(check_api_base("https://api.github.com").is_ok());
        assert!(check_branch("head", "builder/feature-1").is_ok());
        for bad in ["", "-x", "a..b", "a b", "a:b", "x.lock", "a/"] {
            assert!(check_branch("head", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_http_api_bases_only_on_this_machine() {
        for ok in [
            "http://127.0.0.1:9/api/v4",
            "http://127.9.9.9/api",
            "http://localhost:3000",
            "http://LOCALHOST/api/v1",
            "http://[::1]:8080/api",
            "https://gitlab.example/api/v4",
        ] {
            assert!(check_api_base(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://attacker.example/api",
            "http://10.0.0.1:8080/api",
            "http://127.0.0.1.attacker.example/api",
            "http://localhost.attacker.example/api",
            "http://[::ffff:127.0.0.1]/api",
            "http://[::1]x/api",
            "http://0.0.0.0/api",
        ] {
            let err = check_api_base(bad).unwrap_err();
            assert!(matches!(err, ForgeError::InvalidInput(_)), "{bad}");
        }
        let err = check_api_base("http://attacker.example/api").unwrap_err();
        assert!(err.to_string().contains("https://"), "{err}");
    }
}
