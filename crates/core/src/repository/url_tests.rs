use super::*;

fn refusal(url: &str) -> &'static str {
    match validate_repository_url(url) {
        Ok(()) => panic!("{url:?} was accepted"),
        Err(why) => why,
    }
}

#[test]
fn plain_remotes_and_local_paths_are_accepted() {
    for url in [
        "git@host:path",
        "git@github.com:acme/widget.git",
        "host:path/x.git",
        "git@host:pa@th",
        "ssh://git@host/x",
        "ssh://git@host:2222/x.git",
        "ssh://host/x",
        "https://github.com/acme/widget.git",
        "https://github.com",
        "http://127.0.0.1:8080/app.git",
        "https://[::1]:8443/x",
        "/abs/path",
        "/srv/x.git",
        "file:///abs",
        "file:///srv/x.git",
    ] {
        assert_eq!(validate_repository_url(url), Ok(()), "{url}");
    }
}

#[test]
fn every_credential_bearing_form_is_refused_pointing_to_the_credential_field() {
    for url in [
        "https://user:pw@host/x.git",
        "https://token@host/x.git",
        "ssh://git:pw@host/x.git",
        "user:password@host:path",
        "user:password@host",
        "https:user:pw@host/x",
        "http:/user:secret@host/x",
        "https:/user:secret@host/x",
        "ssh:/git:secret@host/x",
        "http:host/x",
        "https://host/x.git?private_token=secret",
        "https://host/x.git#secret",
        "ssh://git@host/x?token=secret",
        "git@host:x.git?token=secret",
        "ssh://git%3Asecret@host/x",
        "https://user%3Asecret%40host/x",
        "https://host%40evil/x",
        "ssh://g%69t@host/x",
    ] {
        let why = refusal(url);
        assert!(why.contains("`credential`"), "{url}: {why}");
        assert!(!why.contains("secret"), "{url}: {why}");
    }
}

#[test]
fn other_bad_forms_are_refused() {
    assert!(refusal("git://host/x.git").contains("git://"));
    for url in [
        "",
        "relative/path",
        "ext::sh -c evil",
        "ext::sh",
        "-uevil",
        "ftp://host/x",
        "HTTPS://host/x",
        "file://host/x",
        "file:///srv/%2e%2e/x",
        "file:///srv/x?y",
        "https:///x",
        "https://host:0/x",
        "https://host:99999/x",
        "https://ho st/x",
        "https://host\\@evil/x",
        "host:",
        "https://[zz]/x",
    ] {
        assert!(validate_repository_url(url).is_err(), "{url:?}");
    }
}

#[test]
fn targets_name_the_host_and_the_port_git_will_use() {
    let remote = |scheme, host: &str, port| UrlTarget::Remote {
        scheme,
        host: host.to_owned(),
        port,
    };
    assert_eq!(
        url_target("https://GitHub.com/a/b"),
        Ok(remote(RemoteScheme::Https, "github.com", 443))
    );
    assert_eq!(
        url_target("http://127.0.0.1:9/a"),
        Ok(remote(RemoteScheme::Http, "127.0.0.1", 9))
    );
    assert_eq!(
        url_target("git@Host.example:a/b"),
        Ok(remote(RemoteScheme::Ssh, "host.example", 22))
    );
    assert_eq!(
        url_target("ssh://[::1]:2222/x"),
        Ok(remote(RemoteScheme::Ssh, "[::1]", 2222))
    );
    assert_eq!(
        url_target("file:///srv/x"),
        Ok(UrlTarget::Local("/srv/x".into()))
    );
}

#[test]
fn loopback_is_localhost_127_slash_8_and_ipv6_one() {
    for host in [
        "localhost",
        "LOCALHOST",
        "localhost.",
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "[::1]",
    ] {
        assert!(is_loopback_host(host), "{host}");
    }
    for host in [
        "127.0.0.1.evil.example",
        "localhost.evil.example",
        "10.0.0.1",
        "0.0.0.0",
        "[::ffff:127.0.0.1]",
        "127.1",
        "",
    ] {
        assert!(!is_loopback_host(host), "{host}");
    }
}

#[test]
fn only_plain_http_off_this_machine_sends_a_credential_in_clear() {
    assert!(credential_travels_in_clear("http://git.example/x"));
    assert!(credential_travels_in_clear("http://10.0.0.1:8080/x"));
    for url in [
        "http://127.0.0.1:8080/x",
        "http://localhost/x",
        "http://[::1]/x",
        "https://git.example/x",
        "git@git.example:x",
        "file:///srv/x",
        "not a url",
    ] {
        assert!(!credential_travels_in_clear(url), "{url}");
    }
}

#[test]
fn forge_api_bases_are_https_unless_on_this_machine() {
    for ok in [
        "https://api.github.com",
        "https://gitlab.example/api/v4/",
        "http://127.0.0.1:9/api/v4",
        "http://localhost:3000/api/v1",
        "http://[::1]:8080",
    ] {
        assert_eq!(validate_forge_api_base(ok), Ok(()), "{ok}");
    }
    assert!(
        validate_forge_api_base("http://attacker.example/api")
            .unwrap_err()
            .contains("https://")
    );
    for bad in [
        "http://127.0.0.1.attacker.example/",
        "https://u:p@host/api",
        "https://host/api?x=1",
        "https://host%2F@evil/api",
        "ftp://host/api",
        "api.github.com",
        "https:///api",
    ] {
        assert!(validate_forge_api_base(bad).is_err(), "{bad}");
    }
}

fn allow(list: &str) -> UrlAllowList {
    UrlAllowList::parse(list)
        .expect("a valid list")
        .expect("entries")
}

#[test]
fn the_allow_list_parses_or_names_the_bad_entry() {
    assert_eq!(UrlAllowList::parse(" , ").unwrap(), None);
    allow(
        "https://github.com, ssh://*.corp.example, http://127.0.0.1:*, https://*:*, file:///srv/git, https://[::1]:8443/",
    );
    for bad in [
        "github.com",
        "ftp://host",
        "https://host/path",
        "https://user@host",
        "https://host:0",
        "https://host:x",
        "https://*.",
        "https://a*b",
        "file://relative",
        "file:///srv/../etc",
        "file:///srv/%2e",
    ] {
        let err = UrlAllowList::parse(&format!("https://ok.example,{bad}")).unwrap_err();
        assert!(err.contains(bad), "{bad}: {err}");
    }
}

/// Resolves `..` lexically and follows the "symlinks" given as (link, target) pairs.
fn resolver(links: &'static [(&'static str, &'static str)]) -> impl Fn(&Path) -> PathBuf {
    move |path: &Path| {
        let mut out = PathBuf::from("/");
        for c in path.components() {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::Normal(n) => out.push(n),
                _ => {}
            }
            for (link, target) in links {
                if out == Path::new(link) {
                    out = PathBuf::from(target);
                }
            }
        }
        out
    }
}

fn policy(allow_list: &str) -> UrlPolicy {
    UrlPolicy::new(
        vec!["/data".into(), "/work/ws".into()],
        UrlAllowList::parse(allow_list).unwrap(),
    )
}

#[test]
fn local_urls_never_resolve_into_builders_own_state() {
    let resolve = resolver(&[("/srv/link", "/data/mirrors"), ("/srv/x.git", "/work/ws")]);
    let p = policy("");
    for url in [
        "file:///data/mirrors/1234.git",
        "/data/mirrors/1234.git",
        "/data",
        "/srv/../data/keys",
        "file:///srv/link/abc.git",
        "/srv/link",
        "/srv/x",
        "/work/ws/feature/.git",
        "/data/does/not/exist/yet",
    ] {
        let err = p.check(url, &resolve).unwrap_err();
        assert!(err.contains("builder's own state"), "{url}: {err}");
    }
    for url in ["/srv/git/app.git", "file:///datas/x", "/work/other"] {
        assert_eq!(p.check(url, &resolve), Ok(()), "{url}");
    }
}

#[test]
fn the_allow_list_restricts_hosts_ports_and_local_paths() {
    let resolve = resolver(&[("/srv/git/escape", "/etc")]);
    let p = policy("https://github.com, ssh://*.corp.example, http://127.0.0.1:*, file:///srv/git");
    for ok in [
        "https://github.com/a/b.git",
        "https://github.com:443/a/b.git",
        "git@a.corp.example:x.git",
        "ssh://git@deep.a.corp.example/x",
        "http://127.0.0.1:9999/x",
        "/srv/git/app.git",
        "file:///srv/git/sub/app.git",
    ] {
        assert_eq!(p.check(ok, &resolve), Ok(()), "{ok}");
    }
    for refused in [
        "https://github.com:8443/a/b",
        "http://github.com/a/b",
        "https://gist.github.com/a/b",
        "git@corp.example:x.git",
        "git@evilcorp.example:x.git",
        "ssh://git@a.corp.example:2222/x",
        "http://127.0.0.2:80/x",
        "https://127.0.0.1/x",
        "/srv/gitx/app.git",
        "/srv/git/../other",
        "/srv/git/escape/passwd",
    ] {
        let err = p.check(refused, &resolve).unwrap_err();
        assert!(err.contains(URL_ALLOW_VARIABLE), "{refused}: {err}");
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    fn config() -> Config {
        Config {
            cases: 2048,
            rng_seed: RngSeed::Fixed(0x7572_6c73),
            failure_persistence: None,
            ..Config::default()
        }
    }

    /// URL-shaped strings from the pieces the parser cares about.
    fn tricky_url() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "http",
            "https",
            "ssh",
            "git",
            "file",
            "://",
            ":/",
            ":",
            "/",
            "//",
            "@",
            "user",
            "pw",
            "host",
            "127.0.0.1",
            "[::1]",
            "%40",
            "%3A",
            "%3a",
            "%",
            "?",
            "#",
            "private_token=",
            "a.git",
            "..",
            ".",
            "-",
            "\\",
            "::",
            "8080",
            "*",
            "[",
            "]",
            " ",
            "é",
        ]);
        prop::collection::vec(piece, 1..10).prop_map(|p| p.concat())
    }

    /// An independent, simpler reading of "this URL carries a secret": userinfo that is
    /// more than an ssh login name, a query or fragment, or %-escapes near the userinfo.
    fn looks_credentialed(url: &str) -> bool {
        let url = url.trim();
        if url.starts_with('/') || url.starts_with("file:") {
            return false;
        }
        if url.contains(['?', '#']) {
            return true;
        }
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (Some(s), r),
            None => (None, url),
        };
        let head = rest.split('/').next().unwrap_or("");
        if head.contains('%') && scheme.is_some() {
            return true;
        }
        let userinfo = match scheme {
            Some(_) => head.rsplit_once('@').map(|(u, _)| u),
            None => head.split_once('@').map(|(u, _)| u),
        };
        match (scheme, userinfo) {
            (Some("http" | "https"), Some(_)) => true,
            (_, Some(u)) => u.contains([':', '%']),
            // `http:/user:pw@host` is scp-like to git, with the secret in its path.
            (None, None) => {
                url.contains('@')
                    && url.split_once(':').is_some_and(|(h, _)| {
                        matches!(h, "http" | "https" | "ssh" | "git" | "file")
                    })
            }
            _ => false,
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn nothing_panics(s in any::<String>()) {
            let _ = validate_repository_url(&s);
            let _ = credential_travels_in_clear(&s);
            let _ = validate_forge_api_base(&s);
            let _ = UrlAllowList::parse(&s);
            let _ = is_loopback_host(&s);
            let _ = policy("https://*:*, file:///srv").check(&s, &resolver(&[]));
        }

        #[test]
        fn no_accepted_url_carries_a_credential(url in tricky_url()) {
            if validate_repository_url(&url).is_ok() {
                prop_assert!(!looks_credentialed(&url), "accepted {:?}", url);
            }
        }

        #[test]
        fn no_accepted_url_with_a_secret_in_it(
            user in "[a-z]{1,5}",
            secret in "[A-Za-z0-9]{4,8}",
            host in "[a-z]{1,5}(\\.[a-z]{1,5})?",
            form in 0usize..10,
        ) {
            let url = match form {
                0 => format!("https://{user}:{secret}@{host}/x.git"),
                1 => format!("{user}:{secret}@{host}:x.git"),
                2 => format!("http:/{user}:{secret}@{host}/x"),
                3 => format!("https:{user}:{secret}@{host}/x"),
                4 => format!("https://{host}/x.git?private_token={secret}"),
                5 => format!("ssh://{user}%3A{secret}@{host}/x"),
                6 => format!("https://{user}%3A{secret}%40{host}/x"),
                7 => format!("ssh://{user}@{host}/x#{secret}"),
                8 => format!("ssh://{user}:{secret}@{host}/x"),
                _ => format!("{user}@{host}:x?{secret}"),
            };
            prop_assert!(validate_repository_url(&url).is_err(), "accepted {:?}", url);
        }
    }
}
