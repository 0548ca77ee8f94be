//! Client subcommands: they speak Connect to a running `builder serve`.

use anyhow::{Context, Result, bail};
use builder_api::proto::builder::feature::v1 as fp;
use builder_api::proto::builder::repository::v1 as rp;
use connectrpc::client::{ClientConfig, HttpClient};

pub struct Clients {
    pub features: fp::FeatureServiceClient<HttpClient>,
    pub repos: rp::RepositoryServiceClient<HttpClient>,
}

impl Clients {
    pub fn new(server: &str) -> Result<Clients> {
        let uri: http::Uri = server
            .parse()
            .with_context(|| format!("--server {server:?} is not a URL"))?;
        Ok(Clients {
            features: fp::FeatureServiceClient::new(
                HttpClient::plaintext(),
                ClientConfig::new(uri.clone()),
            ),
            repos: rp::RepositoryServiceClient::new(
                HttpClient::plaintext(),
                ClientConfig::new(uri),
            ),
        })
    }
}

pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn rpc_error(e: connectrpc::ConnectError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Prints events as they arrive; returns the type of the terminal event, if one came.
pub async fn follow_events(
    clients: &Clients,
    id: &str,
    after: u64,
    follow: bool,
    json: bool,
) -> Result<Option<String>> {
    let mut stream = clients
        .features
        .list_events(fp::ListEventsRequest {
            feature_execution_id: id.to_string(),
            after_sequence: after,
            follow,
            ..Default::default()
        })
        .await
        .map_err(rpc_error)?;
    let mut terminal = None;
    while let Some(msg) = stream
        .message::<fp::ListEventsResponse>()
        .await
        .map_err(rpc_error)?
    {
        let msg = msg.to_owned_message();
        let Some(event) = msg.event.into_option() else {
            continue;
        };
        if json {
            println!("{}", serde_json::to_string(&event)?);
        } else {
            let at = event
                .timestamp
                .as_option()
                .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
                .map(|t| t.format("%H:%M:%S%.3f").to_string())
                .unwrap_or_default();
            println!(
                "{at} #{:<3} {:<28} {}",
                event.sequence_number, event.r#type, event.summary
            );
        }
        if matches!(
            event.r#type.as_str(),
            "feature.delivered" | "feature.failed" | "feature.cancelled"
        ) {
            terminal = Some(event.r#type.clone());
        }
    }
    Ok(terminal)
}

pub fn read_secret_file(path: &str) -> Result<String> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    if s.trim().is_empty() {
        bail!("{path} is empty");
    }
    Ok(s)
}

/// The longest title derived from a description, "…" included: a commit subject line.
const DERIVED_TITLE_MAX_CHARS: usize = 72;

/// A title for a request that has none: the description's first non-empty line (a leading
/// Markdown heading marker dropped), cut at a word boundary to at most 72 characters with
/// "…" when cut. Never empty: a blank description gets a placeholder, and the server then
/// refuses the description itself.
pub fn title_from_description(description: &str) -> String {
    let first = description
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .find(|l| !l.is_empty());
    let Some(line) = first else {
        return "Feature request".to_string();
    };
    let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= DERIVED_TITLE_MAX_CHARS {
        return line;
    }
    let room = DERIVED_TITLE_MAX_CHARS - 1;
    let head: String = line.chars().take(room).collect();
    // At the last space within the room, unless the room ends exactly on a word's end. When
    // that would keep less than half the room (a URL, a path, one long word), mid-word
    // says more than a bare first word.
    let next_is_space = line.chars().nth(room) == Some(' ');
    let at_word = if next_is_space {
        head.as_str()
    } else {
        head.rsplit_once(' ').map_or("", |(before, _)| before)
    };
    let at_word = at_word.trim_end_matches(|c: char| c.is_whitespace() || ",;:-–—".contains(c));
    let cut = if at_word.chars().count() * 2 < room {
        head.trim_end()
    } else {
        at_word
    };
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_first_line_is_the_title() {
        assert_eq!(
            title_from_description("\n\n  # Add a --json flag  \nto the list command"),
            "Add a --json flag"
        );
        assert_eq!(
            title_from_description("Fix\tthe   login bug"),
            "Fix the login bug"
        );
    }

    #[test]
    fn long_first_line_is_cut_at_a_word() {
        let d = "Make the exporter stream rows instead of buffering the whole table in memory, \
                 because large tables exhaust the heap\nmore detail";
        let t = title_from_description(d);
        assert_eq!(
            t,
            "Make the exporter stream rows instead of buffering the whole table in…"
        );
        assert!(t.chars().count() <= 72, "{t}");

        let exact = "word ".repeat(14) + "ab"; // 72 characters
        assert_eq!(exact.chars().count(), 72);
        assert_eq!(title_from_description(&exact), exact);
        let over = format!("{exact}c");
        let t = title_from_description(&over);
        assert_eq!(t, format!("{}…", "word ".repeat(14).trim_end()));
    }

    #[test]
    fn one_long_word_and_non_ascii_are_cut_by_characters() {
        let t = title_from_description(&"é".repeat(200));
        assert_eq!(t, format!("{}…", "é".repeat(71)));
        assert_eq!(t.chars().count(), 72);
        let t = title_from_description(&format!("See https://example.com/{}", "x".repeat(100)));
        assert_eq!(t.chars().count(), 72, "{t}");
        assert!(
            t.starts_with("See https://example.com/xxx") && t.ends_with("x…"),
            "{t}"
        );
    }

    #[test]
    fn a_title_is_never_empty() {
        for blank in ["", "   \n\t\n", "###\n  "] {
            assert_eq!(
                title_from_description(blank),
                "Feature request",
                "{blank:?}"
            );
        }
    }
}
