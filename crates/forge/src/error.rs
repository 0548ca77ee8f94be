/// Why a forge call failed. No variant ever carries the access token: messages taken from a
/// forge's answer are redacted before they are stored here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgeError {
    /// The caller's input (repository URL, API base, token shape, branch) is unusable.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// 401/403: the forge refused the credential or its scopes.
    #[error("the forge refused the credential: {0}")]
    Auth(String),
    /// 404: repository, pull request or branch unknown to the forge (or hidden from the token).
    #[error("not found on the forge: {0}")]
    NotFound(String),
    /// 429, or GitHub's 403 with `x-ratelimit-remaining: 0`.
    #[error("rate limited by the forge{}", retry_hint(*.retry_after_s))]
    RateLimited { retry_after_s: Option<u64> },
    /// Any other non-success answer, with the forge's own error message.
    #[error("forge API error {status}: {message}")]
    Api { status: u16, message: String },
    /// The forge's TLS certificate was refused: unknown issuer, wrong name, expired. Not
    /// transient; a self-hosted forge behind a private CA needs that CA trusted
    /// (`BUILDER_EXTRA_CA_FILE`).
    #[error(
        "the forge's TLS certificate is not trusted ({0}); for a private CA, add it with BUILDER_EXTRA_CA_FILE"
    )]
    Tls(String),
    /// The forge could not be reached, or its answer could not be read.
    #[error("network error talking to the forge: {0}")]
    Network(String),
}

fn retry_hint(retry_after_s: Option<u64>) -> String {
    retry_after_s
        .map(|s| format!(" (retry after {s}s)"))
        .unwrap_or_default()
}

impl ForgeError {
    /// Whether trying again later can help: rate limits, network failures and 5xx answers.
    pub fn is_transient(&self) -> bool {
        match self {
            ForgeError::RateLimited { .. } | ForgeError::Network(_) => true,
            ForgeError::Api { status, .. } => *status >= 500,
            ForgeError::InvalidInput(_)
            | ForgeError::Auth(_)
            | ForgeError::NotFound(_)
            | ForgeError::Tls(_) => false,
        }
    }
}
