//! RepositoryService: register remotes, keep their credentials (encrypted, write-only) and
//! answer what is known about them.

use crate::Backend;
use crate::convert::{self, invalid, parse_uuid};
use crate::feature::store_error;
use crate::proto::builder::repository::v1::RepositoryState as WireState;
use crate::proto::builder::repository::v1::*;
use builder_core::repository::validate_repository_url;
use builder_core::spec::is_valid_branch_name;
use builder_core::{Credential, Provider, Repository, RepositoryId, RepositoryState};
use builder_store::SecretBytes;
use connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct RepositoryApi {
    backend: Arc<dyn Backend>,
}

impl RepositoryApi {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    async fn load(&self, id: &str) -> Result<Repository, ConnectError> {
        let id = RepositoryId(parse_uuid("id", id)?);
        match self
            .backend
            .store()
            .get_repository(id)
            .await
            .map_err(store_error)?
        {
            Some(r) if r.state != RepositoryState::Deleted => Ok(r),
            _ => Err(ConnectError::not_found(format!(
                "repository {id} not found"
            ))),
        }
    }

    async fn credential(&self, repo: &Repository) -> Result<Option<Credential>, ConnectError> {
        let Some((_, secret)) = self
            .backend
            .store()
            .get_credential(repo.id)
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        serde_json::from_slice(secret.expose())
            .map(Some)
            .map_err(|_| {
                ConnectError::internal(
                    "the stored credential is unreadable; update it with UpdateCredentials",
                )
            })
    }

    async fn save_credential(
        &self,
        id: RepositoryId,
        credential: &Credential,
    ) -> Result<(), ConnectError> {
        let bytes = serde_json::to_vec(credential)
            .map_err(|e| ConnectError::internal(format!("encoding credential: {e}")))?;
        self.backend
            .store()
            .set_credential(id, credential.type_name(), &SecretBytes::new(bytes))
            .await
            .map_err(store_error)
    }
}

fn validate_name(name: &str) -> Result<(), ConnectError> {
    let n = name.trim().chars().count();
    if !(1..=255).contains(&n) {
        return Err(invalid("name", "must be 1–255 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("name", "must not contain control characters"));
    }
    Ok(())
}

fn validate_properties(props: &BTreeMap<String, String>) -> Result<(), ConnectError> {
    if props.len() > 64 {
        return Err(invalid("properties", "at most 64 entries"));
    }
    if props
        .iter()
        .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 4096)
    {
        return Err(invalid(
            "properties",
            "keys must be 1–128 characters and values at most 4096",
        ));
    }
    Ok(())
}

/// What ValidateAccess answers. `valid` is about reading (the credential works at all);
/// WRITE is added when a push dry run — which changes nothing on the remote — is accepted
/// too. When it is not, `error` says why while `valid` stays true, so a client can tell a
/// read-only credential from a broken one.
async fn access_report(
    backend: &dyn Backend,
    url: &str,
    credential: Option<Credential>,
) -> (bool, String, Vec<buffa::EnumValue<Permission>>) {
    if let Err(e) = backend
        .probe_default_branch(url.to_owned(), credential.clone())
        .await
    {
        return (false, e, vec![]);
    }
    let mut permissions = vec![buffa::EnumValue::from(Permission::READ)];
    let error = match backend.probe_write_access(url.to_owned(), credential).await {
        Ok(()) => {
            permissions.push(buffa::EnumValue::from(Permission::WRITE));
            String::new()
        }
        Err(e) => format!("read access only: the write check failed: {e}"),
    };
    (true, error, permissions)
}

// Handlers return concrete types where the generated trait allows any `impl Encodable`.
#[allow(refining_impl_trait)]
impl RepositoryService for RepositoryApi {
    async fn register(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, RegisterRequest>,
    ) -> ServiceResult<RegisterResponse> {
        let req = request.to_owned_message();
        let name = req.name.trim().to_string();
        validate_name(&name)?;
        let url = req.url.trim().to_string();
        validate_repository_url(&url).map_err(|reason| invalid("url", reason))?;
        if !req.default_branch.is_empty() && !is_valid_branch_name(&req.default_branch) {
            return Err(invalid("default_branch", "is not a valid branch name"));
        }
        let properties: BTreeMap<String, String> = req.properties.into_iter().collect();
        validate_properties(&properties)?;
        let provider =
            convert::provider_from_proto(&req.provider)?.unwrap_or_else(|| Provider::detect(&url));
        let credential = convert::credential_from_proto(req.credential.into_option())?;
        let store = self.backend.store();

        // Idempotent: registering the same name and URL again returns the repository.
        if let Some(existing) = store
            .get_repository_by_name(&name)
            .await
            .map_err(store_error)?
        {
            if existing.url == url {
                if let Some(c) = &credential {
                    self.save_credential(existing.id, c).await?;
                }
                let repo = store
                    .get_repository(existing.id)
                    .await
                    .map_err(store_error)?
                    .unwrap_or(existing);
                return Response::ok(RegisterResponse {
                    repository: convert::repository(&repo).into(),
                    ..Default::default()
                });
            }
            return Err(ConnectError::already_exists(format!(
                "name: a repository named {name:?} already exists"
            )));
        }

        let default_branch = if req.default_branch.is_empty() {
            self.backend.probe_default_branch(url.clone(), credential.clone()).await.map_err(|e| {
                ConnectError::failed_precondition(format!(
                    "default_branch: could not detect the default branch ({e}); check the URL and credential, or set default_branch"
                ))
            })?
        } else {
            req.default_branch
        };
        let now = chrono::Utc::now();
        let repo = Repository {
            id: RepositoryId(uuid::Uuid::now_v7()),
            name,
            url,
            default_branch,
            provider,
            credential_type: credential.as_ref().map(|c| c.type_name().to_string()),
            properties,
            state: RepositoryState::Active,
            created_at: now,
            updated_at: now,
            last_accessed_at: None,
        };
        store.create_repository(&repo).await.map_err(store_error)?;
        if let Some(c) = &credential {
            self.save_credential(repo.id, c).await?;
        }
        Response::ok(RegisterResponse {
            repository: convert::repository(&repo).into(),
            ..Default::default()
        })
    }

    async fn get(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, GetRequest>,
    ) -> ServiceResult<GetResponse> {
        let repo = self.load(request.id).await?;
        Response::ok(GetResponse {
            repository: convert::repository(&repo).into(),
            ..Default::default()
        })
    }

    async fn get_by_name(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, GetByNameRequest>,
    ) -> ServiceResult<GetByNameResponse> {
        validate_name(request.name)?;
        let repo = self
            .backend
            .store()
            .get_repository_by_name(request.name.trim())
            .await
            .map_err(store_error)?
            .filter(|r| r.state != RepositoryState::Deleted)
            .ok_or_else(|| {
                ConnectError::not_found(format!("no repository named {:?}", request.name))
            })?;
        Response::ok(GetByNameResponse {
            repository: convert::repository(&repo).into(),
            ..Default::default()
        })
    }

    async fn list(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, ListRequest>,
    ) -> ServiceResult<ServiceStream<ListResponse>> {
        let req = request.to_owned_message();
        let page = req.pagination.into_option().unwrap_or_default();
        if page.limit > 500 {
            return Err(invalid("pagination.limit", "must be at most 500"));
        }
        let query = if req.query.is_empty() {
            None
        } else {
            Some(req.query.as_str())
        };
        let limit = if page.limit == 0 { 100 } else { page.limit };
        let repos = self
            .backend
            .store()
            .list_repositories(query, limit, page.offset)
            .await
            .map_err(store_error)?;
        let wanted: Vec<i32> = req.states.iter().map(|s| s.to_i32()).collect();
        let items: Vec<_> = repos
            .iter()
            .map(convert::repository)
            .filter(|r| {
                if wanted.is_empty() {
                    r.state.to_i32() != WireState::DELETED as i32
                } else {
                    wanted.contains(&r.state.to_i32())
                }
            })
            .map(|r| {
                Ok(ListResponse {
                    repository: r.into(),
                    ..Default::default()
                })
            })
            .collect();
        Response::ok(Box::pin(futures::stream::iter(items)) as ServiceStream<ListResponse>)
    }

    async fn update(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, UpdateRequest>,
    ) -> ServiceResult<UpdateResponse> {
        let req = request.to_owned_message();
        let mut repo = self.load(&req.id).await?;
        if let Some(name) = req.name {
            validate_name(&name)?;
            repo.name = name.trim().to_string();
        }
        if let Some(branch) = req.default_branch {
            if !is_valid_branch_name(&branch) {
                return Err(invalid("default_branch", "is not a valid branch name"));
            }
            repo.default_branch = branch;
        }
        if !req.properties.is_empty() {
            let props: BTreeMap<String, String> = req.properties.into_iter().collect();
            validate_properties(&props)?;
            repo.properties = props;
        }
        repo.updated_at = chrono::Utc::now();
        self.backend
            .store()
            .update_repository(&repo)
            .await
            .map_err(store_error)?;
        Response::ok(UpdateResponse {
            repository: convert::repository(&repo).into(),
            ..Default::default()
        })
    }

    async fn update_credentials(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, UpdateCredentialsRequest>,
    ) -> ServiceResult<UpdateCredentialsResponse> {
        let req = request.to_owned_message();
        let mut repo = self.load(&req.id).await?;
        let credential = convert::credential_from_proto(req.credential.into_option())?
            .ok_or_else(|| invalid("credential", "is required"))?;
        self.save_credential(repo.id, &credential).await?;
        repo.credential_type = Some(credential.type_name().to_string());
        repo.updated_at = chrono::Utc::now();
        self.backend
            .store()
            .update_repository(&repo)
            .await
            .map_err(store_error)?;
        Response::ok(UpdateCredentialsResponse {
            repository: convert::repository(&repo).into(),
            ..Default::default()
        })
    }

    async fn validate_access(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, ValidateAccessRequest>,
    ) -> ServiceResult<ValidateAccessResponse> {
        let repo = self.load(request.id).await?;
        let credential = self.credential(&repo).await?;
        let (valid, error, permissions) =
            access_report(&*self.backend, &repo.url, credential).await;
        Response::ok(ValidateAccessResponse {
            valid,
            error,
            permissions,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, DeleteRequest>,
    ) -> ServiceResult<DeleteResponse> {
        let id = RepositoryId(parse_uuid("id", request.id)?);
        let deleted = self
            .backend
            .store()
            .delete_repository(id)
            .await
            .map_err(store_error)?;
        Response::ok(DeleteResponse {
            deleted,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use builder_core::FeatureId;
    use futures::future::BoxFuture;
    use std::path::PathBuf;

    /// The Backend methods `access_report` never calls.
    macro_rules! unused_backend_methods {
        () => {
            fn store(&self) -> Arc<dyn builder_store::Store> {
                unreachable!("access_report never touches the store")
            }
            fn submit(&self, _: FeatureId) -> Result<(), String> {
                Ok(())
            }
            fn interrupt(&self, _: FeatureId) {}
            fn max_repair_iterations(&self) -> u32 {
                3
            }
            fn artifacts_dir(&self, _: FeatureId) -> PathBuf {
                PathBuf::new()
            }
        };
    }

    /// Probes that answer as told.
    struct Probes {
        read: Result<(), String>,
        write: Result<(), String>,
    }

    impl Backend for Probes {
        unused_backend_methods!();
        fn probe_default_branch(
            &self,
            _: String,
            _: Option<Credential>,
        ) -> BoxFuture<'static, Result<String, String>> {
            let r = self.read.clone().map(|()| "main".to_string());
            Box::pin(async move { r })
        }
        fn probe_write_access(
            &self,
            _: String,
            _: Option<Credential>,
        ) -> BoxFuture<'static, Result<(), String>> {
            let r = self.write.clone();
            Box::pin(async move { r })
        }
    }

    /// A backend that can read but has no write check (the trait's default).
    struct NoWriteCheck;

    impl Backend for NoWriteCheck {
        unused_backend_methods!();
        fn probe_default_branch(
            &self,
            _: String,
            _: Option<Credential>,
        ) -> BoxFuture<'static, Result<String, String>> {
            Box::pin(async { Ok("main".to_string()) })
        }
    }

    type Perm = buffa::EnumValue<Permission>;

    fn read() -> Perm {
        Perm::from(Permission::READ)
    }

    fn write() -> Perm {
        Perm::from(Permission::WRITE)
    }

    #[tokio::test]
    async fn read_and_write_when_the_dry_run_is_accepted() {
        let b = Probes {
            read: Ok(()),
            write: Ok(()),
        };
        let (valid, error, p) = access_report(&b, "https://h/r.git", None).await;
        assert!(valid);
        assert_eq!(error, "");
        assert_eq!(p, vec![read(), write()]);
    }

    #[tokio::test]
    async fn read_only_credentials_stay_valid_and_say_why_there_is_no_write() {
        let b = Probes {
            read: Ok(()),
            write: Err("authentication failed for https://h/r.git: 403".into()),
        };
        let (valid, error, p) = access_report(&b, "https://h/r.git", None).await;
        assert!(valid);
        assert!(error.contains("403"), "{error}");
        assert_eq!(p, vec![read()]);
        // A backend without a write check never claims WRITE.
        let (valid, error, p) = access_report(&NoWriteCheck, "https://h/r.git", None).await;
        assert!(valid);
        assert!(error.contains("cannot check write access"), "{error}");
        assert_eq!(p, vec![read()]);
    }

    #[tokio::test]
    async fn no_read_access_is_invalid_with_no_permissions() {
        let b = Probes {
            read: Err("not found".into()),
            write: Ok(()),
        };
        let (valid, error, p) = access_report(&b, "https://h/r.git", None).await;
        assert!(!valid);
        assert_eq!(error, "not found");
        assert!(p.is_empty());
    }
}
