//! Remote URL classification and userinfo stripping.

use crate::GitError;

/// How git will talk to a remote, which decides how a credential is handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UrlKind {
    Http,
    Ssh,
    Local,
}

/// Classifies `url` and refuses anything that would put a secret in `.git/config` or reach
/// an unsafe transport (`ext::`, `fd::`, option-looking arguments).
pub(crate) fn classify_url(url: &str) -> Result<UrlKind, GitError> {
    let shown = redact_url(url);
    let invalid = |why: &str| Err(GitError::InvalidInput(format!("git URL {shown:?}: {why}")));
    if url.is_empty() {
        return invalid("empty");
    }
    if url.starts_with('-') {
        return invalid("must not start with '-'");
    }
    if url.chars().any(|c| c.is_control()) {
        return invalid("contains control characters");
    }
    let lower = url.to_ascii_lowercase();
    if let Some((scheme, rest)) = lower.split_once("://")
        && !scheme.contains('/')
    {
        let authority = rest.split('/').next().unwrap_or("");
        return match scheme {
            "http" | "https" => {
                if authority.contains('@') {
                    invalid("credentials must not be embedded in the URL; pass a credential")
                } else {
                    Ok(UrlKind::Http)
                }
            }
            "ssh" | "git+ssh" | "ssh+git" => match authority.rsplit_once('@') {
                Some((userinfo, _)) if userinfo.contains(':') => {
                    invalid("passwords must not be embedded in the URL")
                }
                _ => Ok(UrlKind::Ssh),
            },
            "file" => Ok(UrlKind::Local),
            _ => invalid("unsupported scheme (use https, http, ssh, file or a path)"),
        };
    }
    // `<transport>::<address>` runs a remote helper, e.g. `ext::sh -c …`.
    if let Some((before, _)) = url.split_once("::")
        && !before.contains('/')
    {
        return invalid("transport-helper syntax is not allowed");
    }
    // git's own rule for scp-like syntax: a ':' before any '/'.
    match (url.find(':'), url.find('/')) {
        (Some(colon), slash) if slash.is_none_or(|s| colon < s) => Ok(UrlKind::Ssh),
        _ => Ok(UrlKind::Local),
    }
}

/// Whether `url` is plain `http://` to a host that is not this machine (localhost,
/// 127.0.0.0/8, [::1]): anything git sends there, auth included, crosses the network
/// unencrypted.
pub(crate) fn is_plain_http_off_loopback(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, port)) if port.is_empty() || port.starts_with(':') => addr,
            _ => return true,
        },
        None => host_port.split(':').next().unwrap_or(""),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !loopback
}

/// `url` without any `user:password@` userinfo, safe to log or show.
pub fn redact_url(url: &str) -> String {
    strip_userinfo(url)
}

/// Removes the userinfo of every `scheme://user:pass@host` in free text (git echoes URLs in
/// its messages).
pub(crate) fn strip_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || "'\"<>`".contains(c))
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => out.push_str(&authority[at + 1..]),
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_supported_urls() {
        assert_eq!(
            classify_url("https://github.com/o/r.git").unwrap(),
            UrlKind::Http
        );
        assert_eq!(
            classify_url("http://127.0.0.1:8080/r").unwrap(),
            UrlKind::Http
        );
        assert_eq!(
            classify_url("ssh://git@host:22/o/r.git").unwrap(),
            UrlKind::Ssh
        );
        assert_eq!(
            classify_url("git@github.com:o/r.git").unwrap(),
            UrlKind::Ssh
        );
        assert_eq!(classify_url("file:///srv/r.git").unwrap(), UrlKind::Local);
        assert_eq!(classify_url("/srv/r.git").unwrap(), UrlKind::Local);
        assert_eq!(classify_url("./a:b/r.git").unwrap(), UrlKind::Local);
    }

    #[test]
    fn refuses_unsafe_urls_without_echoing_secrets() {
        for url in [
            "https://user:hunter2@host/r.git",
            "https://hunter2@host/r.git",
            "ssh://git:hunter2@host/r.git",
            "ext::sh -c hunter2",
            "fd::3",
            "-uhunter2",
            "git://host/r.git",
            "https://host/r\nhunter2",
            "",
        ] {
            let err = classify_url(url).unwrap_err();
            assert!(matches!(err, GitError::InvalidInput(_)), "{url}: {err:?}");
            if url.contains("://") && !url.contains('\n') {
                assert!(!err.to_string().contains("hunter2"), "{err}");
            }
        }
    }

    #[test]
    fn plain_http_is_in_clear_unless_it_stays_on_this_machine() {
        for url in [
            "http://git.example/r.git",
            "HTTP://git.example/r.git",
            "http://10.0.0.1:8080/r.git",
            "http://127.0.0.1.evil.example/r.git",
            "http://[::ffff:127.0.0.1]/r.git",
            "http://[::1]x/r.git",
        ] {
            assert!(is_plain_http_off_loopback(url), "{url}");
        }
        for url in [
            "http://127.0.0.1:8080/r.git",
            "http://127.3.2.1/r.git",
            "http://localhost/r.git",
            "http://[::1]:9/r.git",
            "https://git.example/r.git",
            "ssh://git@git.example/r.git",
            "git@git.example:r.git",
            "/srv/r.git",
        ] {
            assert!(!is_plain_http_off_loopback(url), "{url}");
        }
    }

    #[test]
    fn strips_userinfo_everywhere_in_text() {
        assert_eq!(
            strip_userinfo("fatal: unable to access 'https://u:p@host:443/r.git/': boom"),
            "fatal: unable to access 'https://host:443/r.git/': boom"
        );
        assert_eq!(
            strip_userinfo("a http://x@h/ and ssh://git@h2 end"),
            "a http://h/ and ssh://h2 end"
        );
        assert_eq!(strip_userinfo("no urls here"), "no urls here");
        assert_eq!(strip_userinfo("trailing ://"), "trailing ://");
    }
}
