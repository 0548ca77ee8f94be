//! The `builder` binary: `serve` runs the whole platform in one process; the other
//! subcommands are clients of a running server.

mod client;
mod config;
mod serve;

use anyhow::{Context, Result, bail};
use builder_api::proto::builder::feature::v1 as fp;
use builder_api::proto::builder::repository::v1 as rp;
use clap::{Parser, Subcommand};
use client::{Clients, print_json, rpc_error};

#[derive(Parser)]
#[command(
    name = "builder",
    version,
    about = "Autonomous feature delivery into existing git repositories"
)]
struct Cli {
    /// The builder server the client subcommands talk to.
    #[arg(
        long,
        global = true,
        env = "BUILDER_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run API, bus and workers in one process (SQLite under BUILDER_DATA_DIR by default).
    Serve,
    /// Apply the store's migrations and exit.
    Migrate,
    /// Manage repositories.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Submit and follow features.
    #[command(subcommand)]
    Feature(FeatureCommand),
    /// Run SWE-style tasks through this binary's own server with a scripted model and check
    /// the pushed branches natively (or, with --native-only, check the tasks themselves).
    Eval(builder_eval::EvalArgs),
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum RepoCommand {
    /// Register a git repository (any URL git understands).
    Register {
        #[arg(long)]
        name: String,
        #[arg(long)]
        url: String,
        /// Detected from the remote when omitted.
        #[arg(long)]
        default_branch: Option<String>,
        /// An access token (https). Prefer --token-env to keep it out of your shell history.
        #[arg(long, conflicts_with = "token_env")]
        token: Option<String>,
        /// Name of an environment variable that holds the token.
        #[arg(long)]
        token_env: Option<String>,
        /// Username for basic auth (with --password-env) or for the token.
        #[arg(long)]
        username: Option<String>,
        /// Name of an environment variable that holds the basic-auth password.
        #[arg(long)]
        password_env: Option<String>,
        /// A file holding an SSH private key.
        #[arg(long)]
        ssh_key_file: Option<String>,
        /// Override the detected test command.
        #[arg(long)]
        test_command: Option<String>,
        /// Override the detected build command.
        #[arg(long)]
        build_command: Option<String>,
    },
    List {
        #[arg(long, default_value = "")]
        query: String,
    },
    Get {
        /// Repository id or name.
        id_or_name: String,
    },
}

#[derive(Subcommand)]
enum FeatureCommand {
    /// Submit a feature request.
    Create {
        /// Repository id or name.
        #[arg(long)]
        repo: String,
        /// Defaults to the description's first line, cut to 72 characters.
        #[arg(long)]
        title: Option<String>,
        /// What to build, in full.
        #[arg(long, required_unless_present = "description_file")]
        description: Option<String>,
        /// Reads the description from a file (`-`: standard input), for long requests.
        #[arg(long, value_name = "PATH", conflicts_with = "description")]
        description_file: Option<String>,
        #[arg(long = "criterion")]
        acceptance_criteria: Vec<String>,
        #[arg(long = "path-hint")]
        path_hints: Vec<String>,
        #[arg(long)]
        target_branch: Option<String>,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Print each event as it happens; exit non-zero unless the feature is delivered.
        #[arg(long)]
        watch: bool,
    },
    Get {
        id: String,
    },
    List {
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        state: Vec<String>,
        #[arg(long, default_value = "")]
        query: String,
    },
    /// Show a feature's events; --follow keeps streaming until it ends.
    Events {
        id: String,
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    Cancel {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    Retry {
        id: String,
    },
}

/// The hidden subcommand that runs inside each sandbox: it applies Landlock before starting
/// the command, and bridges the egress proxy into the sandbox's network namespace.
pub(crate) const SANDBOX_HELPER: &str = "__sandbox-helper";

fn main() -> std::process::ExitCode {
    // Before clap, logging or a runtime: the helper's stdout is a protocol, and Landlock
    // restricts only the calling thread.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == SANDBOX_HELPER)
    {
        let Err(e) = builder_sandbox::helper_main(std::env::args_os().skip(2));
        eprintln!("builder sandbox helper: {e}");
        return std::process::ExitCode::from(e.exit_code());
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &config::Config) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .map_err(|e| anyhow::anyhow!("LOG_LEVEL={:?} is not valid: {e}", config.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_json {
        builder.json().init()
    } else {
        builder.init()
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<std::process::ExitCode> {
    match cli.command {
        Command::Serve => {
            let config = config::Config::from_env()?;
            init_logging(&config)?;
            serve::serve(config).await?;
        }
        Command::Migrate => {
            let config = config::Config::from_env()?;
            init_logging(&config)?;
            builder_store::open(config.database_url.as_deref(), &config.data_dir, true)
                .await
                .context("migrating")?;
            println!("migrations applied");
        }
        Command::Repo(cmd) => repo(Clients::new(&cli.server)?, cmd).await?,
        Command::Feature(cmd) => return feature(Clients::new(&cli.server)?, cmd).await,
        Command::Eval(args) => {
            let report = builder_eval::run(&args).await.context("builder eval")?;
            // The run completed; tasks the eval itself could not evaluate make it fail.
            let errors = report.infrastructure_errors();
            if errors > 0 {
                eprintln!("error: builder eval could not evaluate {errors} task(s) (see above)");
                return Ok(std::process::ExitCode::from(2));
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn env_secret(name: &str) -> Result<String> {
    let v =
        std::env::var(name).with_context(|| format!("environment variable {name} is not set"))?;
    if v.is_empty() {
        bail!("environment variable {name} is empty");
    }
    Ok(v)
}

async fn resolve_repo(clients: &Clients, id_or_name: &str) -> Result<rp::Repository> {
    let result = if uuid::Uuid::parse_str(id_or_name).is_ok() {
        clients
            .repos
            .get(rp::GetRequest {
                id: id_or_name.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_owned().repository)
    } else {
        clients
            .repos
            .get_by_name(rp::GetByNameRequest {
                name: id_or_name.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_owned().repository)
    };
    result
        .map_err(rpc_error)?
        .into_option()
        .context("the server returned no repository")
}

async fn repo(clients: Clients, cmd: RepoCommand) -> Result<()> {
    match cmd {
        RepoCommand::Register {
            name,
            url,
            default_branch,
            token,
            token_env,
            username,
            password_env,
            ssh_key_file,
            test_command,
            build_command,
        } => {
            let token = match (token, token_env) {
                (Some(t), _) => Some(t),
                (None, Some(var)) => Some(env_secret(&var)?),
                (None, None) => None,
            };
            let credential = if let Some(token) = token {
                Some(rp::Credential {
                    r#type: rp::CredentialType::TOKEN.into(),
                    token,
                    username: username.unwrap_or_default(),
                    ..Default::default()
                })
            } else if let Some(var) = password_env {
                Some(rp::Credential {
                    r#type: rp::CredentialType::BASIC.into(),
                    username: username.context("--password-env needs --username")?,
                    password: env_secret(&var)?,
                    ..Default::default()
                })
            } else if let Some(file) = ssh_key_file {
                Some(rp::Credential {
                    r#type: rp::CredentialType::SSH_KEY.into(),
                    ssh_private_key: client::read_secret_file(&file)?,
                    ..Default::default()
                })
            } else {
                None
            };
            let mut properties = std::collections::HashMap::new();
            if let Some(t) = test_command {
                properties.insert("test_command".to_string(), t);
            }
            if let Some(b) = build_command {
                properties.insert("build_command".to_string(), b);
            }
            let resp = clients
                .repos
                .register(rp::RegisterRequest {
                    name,
                    url,
                    default_branch: default_branch.unwrap_or_default(),
                    credential: credential.into(),
                    properties: properties.into_iter().collect(),
                    ..Default::default()
                })
                .await
                .map_err(rpc_error)?;
            print_json(&resp.into_owned().repository)?;
        }
        RepoCommand::List { query } => {
            let mut stream = clients
                .repos
                .list(rp::ListRequest {
                    query,
                    ..Default::default()
                })
                .await
                .map_err(rpc_error)?;
            while let Some(msg) = stream
                .message::<rp::ListResponse>()
                .await
                .map_err(rpc_error)?
            {
                if let Some(r) = msg.to_owned_message().repository.into_option() {
                    println!("{}  {:<30} {}  ({})", r.id, r.name, r.url, r.default_branch);
                }
            }
        }
        RepoCommand::Get { id_or_name } => print_json(&resolve_repo(&clients, &id_or_name).await?)?,
    }
    Ok(())
}

async fn feature(clients: Clients, cmd: FeatureCommand) -> Result<std::process::ExitCode> {
    match cmd {
        FeatureCommand::Create {
            repo,
            title,
            description,
            description_file,
            acceptance_criteria,
            path_hints,
            target_branch,
            idempotency_key,
            watch,
        } => {
            // clap guarantees exactly one of the two. Only the end is trimmed: a file ends
            // with a newline, while leading indentation may be Markdown.
            let description = match (description, description_file) {
                (Some(d), _) => d,
                (None, Some(path)) if path == "-" => {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                        .context("reading the description from standard input")?;
                    text.trim_end().to_string()
                }
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .with_context(|| format!("reading the description from {path}"))?
                    .trim_end()
                    .to_string(),
                (None, None) => bail!("give --description or --description-file"),
            };
            let title = title.unwrap_or_else(|| client::title_from_description(&description));
            let repository = resolve_repo(&clients, &repo).await?;
            let resp = clients
                .features
                .create(fp::CreateRequest {
                    spec: fp::FeatureSpec {
                        title,
                        description,
                        repository_id: repository.id,
                        target_branch: target_branch.unwrap_or_default(),
                        acceptance_criteria,
                        path_hints,
                        ..Default::default()
                    }
                    .into(),
                    idempotency_key: idempotency_key.unwrap_or_default(),
                    ..Default::default()
                })
                .await
                .map_err(rpc_error)?;
            let execution = resp
                .into_owned()
                .execution
                .into_option()
                .context("the server returned no execution")?;
            if !watch {
                print_json(&execution)?;
                return Ok(std::process::ExitCode::SUCCESS);
            }
            eprintln!("feature {} submitted; following its events", execution.id);
            let terminal = client::follow_events(&clients, &execution.id, 0, true, false).await?;
            return Ok(match terminal.as_deref() {
                Some("feature.delivered") => std::process::ExitCode::SUCCESS,
                Some(other) => {
                    eprintln!("feature {} ended with {other}", execution.id);
                    std::process::ExitCode::from(2)
                }
                None => {
                    eprintln!("the event stream ended before the feature did");
                    std::process::ExitCode::from(3)
                }
            });
        }
        FeatureCommand::Get { id } => {
            let resp = clients
                .features
                .get(fp::GetRequest {
                    id,
                    ..Default::default()
                })
                .await
                .map_err(rpc_error)?;
            print_json(&resp.into_owned().execution)?;
        }
        FeatureCommand::List { repo, state, query } => {
            let repository_id = match repo {
                Some(r) => resolve_repo(&clients, &r).await?.id,
                None => String::new(),
            };
            let mut states = Vec::new();
            for s in state {
                let v = match s.to_ascii_uppercase().as_str() {
                    "PENDING" => fp::FeatureState::PENDING,
                    "ANALYZING" => fp::FeatureState::ANALYZING,
                    "PLANNING" => fp::FeatureState::PLANNING,
                    "EXECUTING" => fp::FeatureState::EXECUTING,
                    "VERIFYING" => fp::FeatureState::VERIFYING,
                    "COMPLETED" => fp::FeatureState::COMPLETED,
                    "FAILED" => fp::FeatureState::FAILED,
                    "CANCELLED" => fp::FeatureState::CANCELLED,
                    other => bail!("--state {other:?} is not a feature state"),
                };
                states.push(v.into());
            }
            let mut stream = clients
                .features
                .search(fp::SearchRequest {
                    repository_id,
                    states,
                    query,
                    ..Default::default()
                })
                .await
                .map_err(rpc_error)?;
            while let Some(msg) = stream
                .message::<fp::SearchResponse>()
                .await
                .map_err(rpc_error)?
            {
                if let Some(f) = msg.to_owned_message().execution.into_option() {
                    let title = f
                        .spec
                        .as_option()
                        .map(|s| s.title.clone())
                        .unwrap_or_default();
                    println!(
                        "{}  {:<10} {}",
                        f.id,
                        format!("{:?}", f.state.as_known().unwrap_or_default()),
                        title
                    );
                }
            }
        }
        FeatureCommand::Events { id, follow, json } => {
            client::follow_events(&clients, &id, 0, follow, json).await?;
        }
        FeatureCommand::Cancel { id, reason } => {
            let resp = clients
                .features
                .cancel(fp::CancelRequest {
                    id,
                    reason,
                    ..Default::default()
                })
                .await
                .map_err(rpc_error)?;
            print_json(&resp.into_owned().execution)?;
        }
        FeatureCommand::Retry { id } => {
            let resp = clients
                .features
                .retry(fp::RetryRequest {
                    id,
                    ..Default::default()
                })
                .await
                .map_err(rpc_error)?;
            print_json(&resp.into_owned().execution)?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
