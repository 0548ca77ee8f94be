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
