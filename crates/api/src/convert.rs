//! Translation between wire messages and domain types. Every parse error names the field.

use crate::proto::builder::feature::v1 as fp;
use crate::proto::builder::repository::v1 as rp;
use buffa::{EnumValue, MessageField};
use buffa_types::google::protobuf::Timestamp;
use builder_core::event::{ErrorCode, ExecutionError};
use builder_core::{
    Credential, EventEnvelope, Feature, FeatureConstraints, FeatureSpec, FeatureState, Provider,
    Repository, RepositoryId, RepositoryState,
};
use chrono::{DateTime, Utc};
use connectrpc::ConnectError;

pub fn invalid(field: &str, reason: impl std::fmt::Display) -> ConnectError {
    ConnectError::invalid_argument(format!("{field}: {reason}"))
}

pub fn parse_uuid(field: &str, value: &str) -> Result<uuid::Uuid, ConnectError> {
    if value.trim().is_empty() {
        return Err(invalid(field, "is required"));
    }
    uuid::Uuid::parse_str(value.trim())
        .map_err(|_| invalid(field, format!("{:?} is not a UUID", truncate(value, 64))))
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

pub fn timestamp(t: DateTime<Utc>) -> MessageField<Timestamp, buffa::Inline<Timestamp>> {
    MessageField::some(Timestamp::from_unix(
        t.timestamp(),
        t.timestamp_subsec_nanos() as i32,
    ))
}

pub fn from_timestamp(t: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
}

pub fn spec_from_proto(s: fp::FeatureSpec) -> Result<FeatureSpec, ConnectError> {
    let repository_id = RepositoryId(parse_uuid("spec.repository_id", &s.repository_id)?);
    let c = s.constraints.into_option().unwrap_or_default();
    Ok(FeatureSpec {
        title: s.title.trim().to_string(),
        description: s.description,
        repository_id,
        target_branch: s.target_branch.trim().to_string(),
        feature_branch: s.feature_branch.trim().to_string(),
        acceptance_criteria: s.acceptance_criteria,
        path_hints: s.path_hints,
        constraints: FeatureConstraints {
            max_steps: c.max_steps,
            timeout_minutes: c.timeout_minutes,
            allowed_paths: c.allowed_paths,
            forbidden_paths: c.forbidden_paths,
            require_tests: c.require_tests,
            require_build: c.require_build,
            max_llm_tokens: c.max_llm_tokens,
        },
        properties: s.properties.into_iter().collect(),
    })
}

pub fn spec_to_proto(s: &FeatureSpec) -> fp::FeatureSpec {
    let c = &s.constraints;
    fp::FeatureSpec {
        title: s.title.clone(),
        description: s.description.clone(),
        repository_id: s.repository_id.to_string(),
        target_branch: s.target_branch.clone(),
        feature_branch: s.feature_branch.clone(),
        acceptance_criteria: s.acceptance_criteria.clone(),
        path_hints: s.path_hints.clone(),
        constraints: MessageField::some(fp::FeatureConstraints {
            max_steps: c.max_steps,
            timeout_minutes: c.timeout_minutes,
            allowed_paths: c.allowed_paths.clone(),
            forbidden_paths: c.forbidden_paths.clone(),
            require_tests: c.require_tests,
            require_build: c.require_build,
            max_llm_tokens: c.max_llm_tokens,
            ..Default::default()
        }),
        properties: s.properties.clone().into_iter().collect(),
        ..Default::default()
    }
}

pub fn state_to_proto(s: FeatureState) -> fp::FeatureState {
    match s {
        FeatureState::Pending => fp::FeatureState::PENDING,
        FeatureState::Analyzing => fp::FeatureState::ANALYZING,
        FeatureState::Planning => fp::FeatureState::PLANNING,
        FeatureState::Executing => fp::FeatureState::EXECUTING,
        FeatureState::Verifying => fp::FeatureState::VERIFYING,
        FeatureState::Completed => fp::FeatureState::COMPLETED,
        FeatureState::Failed => fp::FeatureState::FAILED,
        FeatureState::Cancelled => fp::FeatureState::CANCELLED,
    }
}

pub fn state_from_proto(v: &EnumValue<fp::FeatureState>) -> Result<FeatureState, ConnectError> {
    Ok(match v.as_known() {
        Some(fp::FeatureState::PENDING) => FeatureState::Pending,
        Some(fp::FeatureState::ANALYZING) => FeatureState::Analyzing,
        Some(fp::FeatureState::PLANNING) => FeatureState::Planning,
        Some(fp::FeatureState::EXECUTING) => FeatureState::Executing,
        Some(fp::FeatureState::VERIFYING) => FeatureState::Verifying,
        Some(fp::FeatureState::COMPLETED) => FeatureState::Completed,
        Some(fp::FeatureState::FAILED) => FeatureState::Failed,
        Some(fp::FeatureState::CANCELLED) => FeatureState::Cancelled,
        _ => return Err(invalid("states", format!("unknown state {}", v.to_i32()))),
    })
}

fn error_code(c: ErrorCode) -> fp::execution_error::Code {
    use fp::execution_error::Code;
    match c {
        ErrorCode::InvalidInput => Code::INVALID_INPUT,
        ErrorCode::RepositoryAccess => Code::REPOSITORY_ACCESS,
        ErrorCode::AnalysisFailed => Code::ANALYSIS_FAILED,
        ErrorCode::PlanningFailed => Code::PLANNING_FAILED,
        ErrorCode::GenerationFailed => Code::GENERATION_FAILED,
        ErrorCode::BuildFailed => Code::BUILD_FAILED,
        ErrorCode::TestFailed => Code::TEST_FAILED,
        ErrorCode::PushFailed => Code::PUSH_FAILED,
        ErrorCode::Timeout => Code::TIMEOUT,
        ErrorCode::Cancelled => Code::CANCELLED,
        ErrorCode::Internal => Code::INTERNAL,
    }
}

fn step_type(s: &str) -> fp::StepType {
    match s {
        "CREATE_FILE" => fp::StepType::CREATE_FILE,
        "MODIFY_FILE" => fp::StepType::MODIFY_FILE,
        "DELETE_FILE" => fp::StepType::DELETE_FILE,
        "RENAME_FILE" => fp::StepType::RENAME_FILE,
        "ADD_DEPENDENCY" => fp::StepType::ADD_DEPENDENCY,
        "REFACTOR" => fp::StepType::REFACTOR,
        "TEST" => fp::StepType::TEST,
        "DOCUMENTATION" => fp::StepType::DOCUMENTATION,
        _ => fp::StepType::STEP_TYPE_UNSPECIFIED,
    }
}

fn error_to_proto(e: &ExecutionError) -> fp::ExecutionError {
    fp::ExecutionError {
        code: EnumValue::from(error_code(e.code)),
        message: e.message.clone(),
        details: e.details.clone(),
        retryable: e.retryable,
        failed_step: e.failed_step.clone(),
        ..Default::default()
    }
}

pub fn execution(f: &Feature) -> fp::FeatureExecution {
    let plan = f.plan.as_ref().map(|p| fp::ExecutionPlan {
        steps: p
            .steps
            .iter()
            .map(|s| fp::PlanStep {
                index: s.index,
                description: s.description.clone(),
                r#type: EnumValue::from(step_type(&s.step_type)),
                target_files: s.target_files.clone(),
                dependencies: s.dependencies.clone(),
                ..Default::default()
            })
            .collect(),
        affected_files: p.affected_files.clone(),
        summary: p.summary.clone(),
        ..Default::default()
    });
    let total_steps = f.plan.as_ref().map(|p| p.steps.len() as u32).unwrap_or(0);
    fp::FeatureExecution {
        id: f.id.to_string(),
        correlation_id: f.correlation_id.clone(),
        repository_id: f.spec.repository_id.to_string(),
        spec: MessageField::some(spec_to_proto(&f.spec)),
        state: EnumValue::from(state_to_proto(f.state)),
        plan: plan.into(),
        progress: MessageField::some(fp::ExecutionProgress {
            total_steps,
            completed_steps: f.completed_steps,
            current_step: f.current_step.unwrap_or(0),
            // A wait for a shared slot is what the user most needs to see.
            current_step_description: f
                .waiting_for
                .clone()
                .unwrap_or_else(|| f.current_step_description.clone()),
            percent_complete: f.percent_complete(),
            iteration: f.iteration,
            ..Default::default()
        }),
        error: f.error.as_ref().map(error_to_proto).into(),
        result: f
            .result
            .as_ref()
            .map(|r| fp::DeliveryResult {
                branch_name: r.branch_name.clone(),
                commit_sha: r.commit_sha.clone(),
                commit_count: r.commit_count,
                files_changed: r.files_changed,
                lines_added: r.lines_added,
                lines_removed: r.lines_removed,
                patch_url: r.patch_url.clone(),
                pull_request_url: r.pull_request_url.clone(),
                summary: r.summary.clone(),
                ..Default::default()
            })
            .into(),
        created_at: timestamp(f.created_at),
        updated_at: timestamp(f.updated_at),
        completed_at: f.completed_at.map(timestamp).unwrap_or_default(),
        feature_branch: f.feature_branch.clone(),
        target_branch: f.target_branch.clone(),
        ..Default::default()
    }
}

pub fn event(e: &EventEnvelope) -> fp::FeatureEvent {
    let summary = e
        .event()
        .map(|ev| ev.summary())
        .unwrap_or_else(|_| e.event_type.clone());
    fp::FeatureEvent {
        id: e.event_id.to_string(),
        r#type: e.event_type.clone(),
        sequence_number: e.sequence,
        timestamp: timestamp(e.timestamp),
        summary,
        payload: serde_json::from_value(e.payload.clone())
            .map(MessageField::some)
            .unwrap_or_default(),
        feature_execution_id: e.feature_id.to_string(),
        causation_id: e.causation_id.map(|c| c.to_string()).unwrap_or_default(),
        correlation_id: e.correlation_id.clone(),
        schema_version: e.schema_version,
        ..Default::default()
    }
}

pub fn provider_to_proto(p: Provider) -> rp::Provider {
    match p {
        Provider::Github => rp::Provider::GITHUB,
        Provider::Gitlab => rp::Provider::GITLAB,
        Provider::Bitbucket => rp::Provider::BITBUCKET,
        Provider::AzureDevops => rp::Provider::AZURE_DEVOPS,
        Provider::Gitea => rp::Provider::GITEA,
        Provider::Generic => rp::Provider::GENERIC,
    }
}

pub fn provider_from_proto(v: &EnumValue<rp::Provider>) -> Result<Option<Provider>, ConnectError> {
    Ok(match v.as_known() {
        Some(rp::Provider::PROVIDER_UNSPECIFIED) => None,
        Some(rp::Provider::GITHUB) => Some(Provider::Github),
        Some(rp::Provider::GITLAB) => Some(Provider::Gitlab),
        Some(rp::Provider::BITBUCKET) => Some(Provider::Bitbucket),
        Some(rp::Provider::AZURE_DEVOPS) => Some(Provider::AzureDevops),
        Some(rp::Provider::GITEA) => Some(Provider::Gitea),
        Some(rp::Provider::GENERIC) => Some(Provider::Generic),
        None => {
            return Err(invalid(
                "provider",
                format!("unknown provider {}", v.to_i32()),
            ));
        }
    })
}

fn credential_type(name: Option<&str>) -> rp::CredentialType {
    match name {
        Some("SSH_KEY") => rp::CredentialType::SSH_KEY,
        Some("TOKEN") => rp::CredentialType::TOKEN,
        Some("OAUTH") => rp::CredentialType::OAUTH,
        Some("BASIC") => rp::CredentialType::BASIC,
        _ => rp::CredentialType::CREDENTIAL_TYPE_UNSPECIFIED,
    }
}

pub fn repository(r: &Repository) -> rp::Repository {
    rp::Repository {
        id: r.id.to_string(),
        name: r.name.clone(),
        url: r.url.clone(),
        default_branch: r.default_branch.clone(),
        provider: EnumValue::from(provider_to_proto(r.provider)),
        has_credentials: r.credential_type.is_some(),
        credential_type: EnumValue::from(credential_type(r.credential_type.as_deref())),
        properties: r.properties.clone().into_iter().collect(),
        state: EnumValue::from(match r.state {
            RepositoryState::Active => rp::RepositoryState::ACTIVE,
            RepositoryState::Inactive => rp::RepositoryState::INACTIVE,
            RepositoryState::Deleted => rp::RepositoryState::DELETED,
        }),
        last_accessed_at: r.last_accessed_at.map(timestamp).unwrap_or_default(),
        created_at: timestamp(r.created_at),
        updated_at: timestamp(r.updated_at),
        ..Default::default()
    }
}

/// A credential message to the domain type. `None` when no credential was given at all.
pub fn credential_from_proto(
    c: Option<rp::Credential>,
) -> Result<Option<Credential>, ConnectError> {
    let Some(c) = c else { return Ok(None) };
    let nonempty = |field: &str, v: String| -> Result<String, ConnectError> {
        if v.is_empty() {
            Err(invalid(field, "is required for this credential type"))
        } else if v.len() > 16 * 1024 {
            Err(invalid(field, "is too long"))
        } else {
            Ok(v)
        }
    };
    let opt = |v: String| if v.is_empty() { None } else { Some(v) };
    Ok(Some(match c.r#type.as_known() {
        Some(rp::CredentialType::TOKEN) => Credential::Token {
            token: nonempty("credential.token", c.token)?,
            username: opt(c.username),
        },
        Some(rp::CredentialType::BASIC) => Credential::Basic {
            username: nonempty("credential.username", c.username)?,
            password: nonempty("credential.password", c.password)?,
        },
        Some(rp::CredentialType::SSH_KEY) => {
            let key = nonempty("credential.ssh_private_key", c.ssh_private_key)?;
            if !key.contains("PRIVATE KEY") {
                return Err(invalid(
                    "credential.ssh_private_key",
                    "is not a PEM/OpenSSH private key",
                ));
            }
            Credential::SshKey { private_key: key }
        }
        Some(rp::CredentialType::OAUTH) => Credential::Oauth {
            token: nonempty("credential.oauth_token", c.oauth_token)?,
            refresh_token: opt(c.oauth_refresh_token),
        },
        Some(rp::CredentialType::CREDENTIAL_TYPE_UNSPECIFIED) => {
            let any_secret = !(c.token.is_empty()
                && c.password.is_empty()
                && c.ssh_private_key.is_empty()
                && c.oauth_token.is_empty());
            if any_secret {
                return Err(invalid(
                    "credential.type",
                    "is required when a credential is given",
                ));
            }
            return Ok(None);
        }
        None => {
            return Err(invalid(
                "credential.type",
                format!("unknown type {}", c.r#type.to_i32()),
            ));
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_errors_name_the_field() {
        let spec = fp::FeatureSpec {
            repository_id: "nope".into(),
            ..Default::default()
        };
        let err = spec_from_proto(spec).unwrap_err();
        assert!(err.to_string().contains("spec.repository_id"), "{err}");
    }

    #[test]
    fn credentials_need_their_fields_and_never_echo_secrets() {
        let c = rp::Credential {
            r#type: EnumValue::from(rp::CredentialType::BASIC),
            password: "s3cret".into(),
            ..Default::default()
        };
        let err = credential_from_proto(Some(c)).unwrap_err();
        assert!(err.to_string().contains("credential.username"));
        assert!(!err.to_string().contains("s3cret"));
        let c = rp::Credential {
            token: "tok".into(),
            ..Default::default()
        };
        assert!(
            credential_from_proto(Some(c))
                .unwrap_err()
                .to_string()
                .contains("credential.type")
        );
        assert_eq!(
            credential_from_proto(Some(rp::Credential::default())).unwrap(),
            None
        );
    }
}
