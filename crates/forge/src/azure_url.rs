//! Azure DevOps remote URLs, which look like no other forge's: the repository sits under
//! `<org>/<project>/_git/<repo>` (https) or `v3/<org>/<project>/<repo>` (ssh), project names
//! may hold percent-encoded spaces, and the organisation is either the first path segment
//! (`dev.azure.com`) or a subdomain (`<org>.visualstudio.com`). Errors never echo the URL.

use crate::ForgeError;

/// Where an Azure DevOps repository lives, and the API root its URL implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AzureLocation {
    /// Decoded project name (may contain spaces).
    pub project: String,
    /// Decoded repository name.
    pub repo: String,
    /// `https://dev.azure.com/<org>`, `https://<org>.visualstudio.com[/<collection>]`, or for
    /// Azure DevOps Server `https://<host>/<collection path>`.
    pub default_api_base: String,
}

fn invalid(msg: &str) -> ForgeError {
    ForgeError::InvalidInput(msg.to_owned())
}

/// Percent-decodes one path segment; refuses what could not be a name (`/`, control
/// characters, `..`, bad escapes, non-UTF-8).
fn decode(segment: &str) -> Result<String, ForgeError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid("Azure DevOps URL has a bad percent-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).map_err(|_| invalid("Azure DevOps URL is not UTF-8"))?;
    if text.is_empty()
        || text == "."
        || text == ".."
        || text
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\')
    {
        return Err(invalid(
            "Azure DevOps URL path must be organisation/project/_git/repository",
        ));
    }
    Ok(text)
}

/// Parses the https and ssh forms Azure DevOps hands out:
/// `https://[user@]dev.azure.com/<org>/<project>/_git/<repo>`,
/// `https://<org>.visualstudio.com/[DefaultCollection/]<project>/_git/<repo>`,
/// `git@ssh.dev.azure.com:v3/<org>/<project>/<repo>`,
/// `<org>@vs-ssh.visualstudio.com:v3/<org>/<project>/<repo>`, and Azure DevOps Server's
/// `https://<host>/<collection…>/<project>/_git/<repo>`. `_git/<repo>` directly after the
/// organisation names the project's default repository (same name as the project).
pub(crate) fn parse_azure_url(url: &str) -> Result<AzureLocation, ForgeError> {
    let url = url.trim();
    let (scheme, authority, path) = match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            (scheme, authority, path)
        }
        None => match url.split_once(':') {
            Some((authority, path)) if !authority.contains('/') => ("ssh", authority, path),
            _ => {
                return Err(invalid(
                    "Azure DevOps URL is neither a URL nor user@host:path",
                ));
            }
        },
    };
    if !matches!(scheme, "https" | "http" | "ssh") {
        return Err(invalid("Azure DevOps URL scheme must be https or ssh"));
    }
    let host = match authority.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => {
            return Err(invalid("repository URL must not embed credentials"));
        }
        Some((_, host)) => host,
        None => authority,
    };
    // The web/API host never carries the ssh port.
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
    .to_ascii_lowercase();
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-[]".contains(c))
    {
        return Err(invalid("repository URL has no valid host"));
    }
    if path.contains(['?', '#']) {
        return Err(invalid("repository URL must not have a query or fragment"));
    }
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let raw: Vec<&str> = path.split('/').collect();

    // ssh: v3/<org>/<project>/<repo>
    if let ["v3", org, project, repo] = raw.as_slice() {
        let (org, project, repo) = (decode(org)?, decode(project)?, decode(repo)?);
        let default_api_base = if host == "ssh.dev.azure.com" {
            format!("https://dev.azure.com/{}", crate::url::encode(&org))
        } else if host.ends_with("visualstudio.com") {
            format!("https://{}.visualstudio.com", crate::url::encode(&org))
        } else {
            return Err(invalid(
                "Azure DevOps ssh URL host must be ssh.dev.azure.com or vs-ssh.visualstudio.com",
            ));
        };
        return Ok(AzureLocation {
            project,
            repo,
            default_api_base,
        });
    }

    let git_at = raw
        .iter()
        .position(|s| *s == "_git")
        .ok_or_else(|| invalid("Azure DevOps URL path must contain /_git/<repository>"))?;
    if git_at + 2 != raw.len() {
        return Err(invalid("Azure DevOps URL must end with /_git/<repository>"));
    }
    let repo = decode(raw[git_at + 1])?;
    let before: Vec<String> = raw[..git_at]
        .iter()
        .map(|s| decode(s))
        .collect::<Result<_, _>>()?;
    // On dev.azure.com the first segment is the organisation; elsewhere the organisation
    // (or collection) is in the host or in every segment before the project.
    let org_segments = usize::from(host == "dev.azure.com");
    let (prefix, project) = if before.len() > org_segments {
        let (prefix, project) = before.split_at(before.len() - 1);
        (prefix.to_vec(), project[0].clone())
    } else {
        // `<org>/_git/<repo>`: the project's default repository.
        (before.clone(), repo.clone())
    };
    if host == "dev.azure.com" && prefix.len() != 1 {
        return Err(invalid(
            "Azure DevOps URL path must be organisation/project/_git/repository",
        ));
    }
    let mut default_api_base = format!("https://{host}");
    for segment in &prefix {
        default_api_base.push('/');
        default_api_base.push_str(&crate::url::encode(segment));
    }
    Ok(AzureLocation {
        project,
        repo,
        default_api_base,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(url: &str) -> (String, String, String) {
        let l = parse_azure_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        (l.project, l.repo, l.default_api_base)
    }

    #[test]
    fn parses_every_form_azure_hands_out() {
        let expected = (
            "My Project".to_owned(),
            "widget".to_owned(),
            "https://dev.azure.com/acme".to_owned(),
        );
        for url in [
            "https://dev.azure.com/acme/My%20Project/_git/widget",
            "https://acme@dev.azure.com/acme/My%20Project/_git/widget",
            "https://dev.azure.com/acme/My%20Project/_git/widget.git/",
            "git@ssh.dev.azure.com:v3/acme/My%20Project/widget",
            "ssh://git@ssh.dev.azure.com:22/v3/acme/My%20Project/widget",
        ] {
            assert_eq!(loc(url), expected, "{url}");
        }
        assert_eq!(
            loc("https://acme.visualstudio.com/Proj/_git/widget"),
            (
                "Proj".into(),
                "widget".into(),
                "https://acme.visualstudio.com".into()
            )
        );
        assert_eq!(
            loc("https://acme.visualstudio.com/DefaultCollection/Proj/_git/widget").2,
            "https://acme.visualstudio.com/DefaultCollection"
        );
        assert_eq!(
            loc("acme@vs-ssh.visualstudio.com:v3/acme/Proj/widget").2,
            "https://acme.visualstudio.com"
        );
        // The project's default repository.
        assert_eq!(
            loc("https://dev.azure.com/acme/_git/widget"),
            (
                "widget".into(),
                "widget".into(),
                "https://dev.azure.com/acme".into()
            )
        );
        // Azure DevOps Server.
        assert_eq!(
            loc("https://tfs.example.com/tfs/Coll/Proj/_git/widget").2,
            "https://tfs.example.com/tfs/Coll"
        );
    }

    #[test]
    fn refuses_other_shapes_without_echoing_secrets() {
        for url in [
            "https://dev.azure.com/acme/widget",
            "https://dev.azure.com/acme/Proj/_git/widget/extra",
            "https://dev.azure.com/acme/Proj/_git/wid%2Fget",
            "https://dev.azure.com/acme/Proj/_git/%zz",
            "https://dev.azure.com/a/b/c/_git/widget",
            "ftp://dev.azure.com/acme/Proj/_git/widget",
            "git@github.com:v3/acme/Proj/widget",
        ] {
            assert!(parse_azure_url(url).is_err(), "{url}");
        }
        let err = parse_azure_url("https://me:pat-s3cret@dev.azure.com/acme/P/_git/r").unwrap_err();
        assert!(!err.to_string().contains("pat-s3cret"));
    }
}
