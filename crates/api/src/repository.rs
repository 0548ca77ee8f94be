//! RepositoryService: register remotes, keep their credentials (encrypted, write-only) and
//! answer what is known about them.

use crate::Backend;
use crate::convert::{self, invalid, parse_uuid};
use crate::feature::store_error;
use crate::proto::builder::repository::v1::RepositoryState as WireState;
use crate::proto::builder::repository::v1::*;
use builder_core::repository::{
    FORGE_API_BASE_PROPERTY, credential_travels_in_clear, validate_forge_api_base,
    validate_repository_url,
};
use builder_core::spec::is_valid_branch_name;
use builder_core::{Credential, Provider, Repository, RepositoryId, RepositoryState};
use builder_store::SecretBytes;
use connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
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

    /// The backend's [`UrlPolicy`](builder_core::repository::UrlPolicy) for `url`, with
    /// local paths resolved on this host.
    fn check_url_policy(&self, url: &str) -> Result<(), String> {
        self.backend.url_policy().check(url, &resolve_local)
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
    if let Some(base) = props.get(FORGE_API_BASE_PROPERTY) {
        validate_forge_api_base(base)
            .map_err(|why| invalid("properties", format!("{FORGE_API_BASE_PROPERTY} {why}")))?;
    }
    Ok(())
}

/// A password or token for a plain `http://` remote off this machine would cross the
/// network unencrypted on every fetch and push.
fn check_credential_transport(url: &str, credential: &Credential) -> Result<(), ConnectError> {
    let secret_over_http = matches!(
        credential,
        Credential::Token { .. } | Credential::Basic { .. } | Credential::Oauth { .. }
    );
    if secret_over_http && credential_travels_in_clear(url) {
        return Err(invalid(
            "credential",
            format!(
                "a {} credential would be sent unencrypted to this http:// remote; use https:// (plain http:// only to localhost, 127.0.0.0/8 or [::1])",
                credential.type_name()
            ),
        ));
    }
    Ok(())
}

/// Where `path` really is: `..` applied and symlinks followed component by component, and
/// for a part that does not exist (yet) its nearest existing ancestor resolved with the
/// rest appended — git may create it, or a symlink may appear there later, but it can only
/// land where that ancestor is.
fn resolve_local(path: &Path) -> PathBuf {
    resolve_following(path, 0)
}

/// Symlinks followed at most, as the kernel's own limit: a loop resolves no further.
const MAX_SYMLINKS: u32 = 40;

fn resolve_following(path: &Path, followed: u32) -> PathBuf {
    let mut resolved = PathBuf::from("/");
    let mut exists = true;
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(name) => {
                resolved.push(name);
                if !exists {
                    continue;
                }
                if let Ok(real) = std::fs::canonicalize(&resolved) {
                    resolved = real;
                    continue;
                }
                exists = false;
                // A dangling symlink leads wherever its target would be created.
                if followed < MAX_SYMLINKS
                    && let Ok(target) = std::fs::read_link(&resolved)
                {
                    resolved.pop();
                    resolved = resolve_following(&resolved.join(target), followed + 1);
                }
            }
        }
    }
    resolved
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
        self.check_url_policy(&url)
            .map_err(|reason| invalid("url", reason))?;
        if !req.default_branch.is_empty() && !is_valid_branch_name(&req.default_branch) {
            return Err(invalid("default_branch", "is not a valid branch name"));
        }
        let properties: BTreeMap<String, String> = req.properties.into_iter().collect();
        validate_properties(&properties)?;
        let provider =
            convert::provider_from_proto(&req.provider)?.unwrap_or_else(|| Provider::detect(&url));
        let credential = convert::credential_from_proto(req.credential.into_option())?;
        if let Some(c) = &credential {
            check_credential_transport(&url, c)?;
        }
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
        let states = req
            .states
            .iter()
            .map(|s| match s.as_known() {
                Some(WireState::ACTIVE) => Ok(RepositoryState::Active),
                Some(WireState::INACTIVE) => Ok(RepositoryState::Inactive),
                Some(WireState::DELETED) => Ok(RepositoryState::Deleted),
                _ => Err(invalid("states", format!("unknown state {}", s.to_i32()))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The state filter goes into the store's query: filtering a page afterwards would
        // return short pages, and DELETED rows would never reach it.
        let query = builder_store::RepositoryQuery {
            query: Some(req.query).filter(|q| !q.is_empty()),
            states,
            limit: if page.limit == 0 { 100 } else { page.limit },
            offset: page.offset,
        };
        let repos = self
            .backend
            .store()
            .list_repositories(&query)
            .await
            .map_err(store_error)?;
        let items: Vec<_> = repos
            .iter()
            .map(|r| {
                Ok(ListResponse {
                    repository: convert::repository(r).into(),
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
        let mut origin_changed = false;
        if !req.properties.is_empty() {
            let props: BTreeMap<String, String> = req.properties.into_iter().collect();
            validate_properties(&props)?;
            let api_base = |p: &BTreeMap<String, String>| {
                p.get(FORGE_API_BASE_PROPERTY)
                    .map(|b| b.trim().trim_end_matches('/').to_owned())
            };
            origin_changed = api_base(&repo.properties) != api_base(&props);
            repo.properties = props;
        }
        // A credential is bound to where it was given for: whoever may call Update must not
        // be able to point the forge API (which gets the token) somewhere else and keep it.
        // Dropped before the new properties are stored, so a failure in between leaves the
        // old origin without a credential rather than the new one with it.
        if origin_changed && repo.credential_type.is_some() {
            self.backend
                .store()
                .clear_credential(repo.id)
                .await
                .map_err(store_error)?;
            repo.credential_type = None;
            tracing::warn!(
                repository = %repo.id,
                "{FORGE_API_BASE_PROPERTY} changed: the stored credential was dropped; give it again with UpdateCredentials"
            );
        }
        repo.updated_at = chrono::Utc::now();
        self.backend
            .store()
            .update_repository(&repo)
            .await
            .map_err(store_error)?;
        // And after: an UpdateCredentials that slipped in between gave its credential for
        // the origin this call is moving away from.
        if origin_changed {
            self.backend
                .store()
                .clear_credential(repo.id)
                .await
                .map_err(store_error)?;
            repo.credential_type = None;
        }
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
        check_credential_transport(&repo.url, &credential)?;
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
        // Checked again here, not only at Register: the allow-list may have been narrowed
        // since, and a probe must never become a way to reach arbitrary hosts and ports.
        if let Err(reason) = self.check_url_policy(&repo.url) {
            return Response::ok(ValidateAccessResponse {
                valid: false,
                error: format!("url: {reason}"),
                ..Default::default()
            });
        }
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
    use builder_core::repository::UrlPolicy;
    use futures::future::BoxFuture;

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
            fn url_policy(&self) -> &UrlPolicy {
                static NONE: std::sync::OnceLock<UrlPolicy> = std::sync::OnceLock::new();
                NONE.get_or_init(UrlPolicy::default)
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

    /// A directory removed when the test ends (this crate has no tempfile dependency).
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// builder's data directory, a symlink into it, a dangling symlink that git would
    /// create through, and a symlink loop.
    fn layout() -> (Scratch, PathBuf) {
        let dir = std::env::temp_dir().join(format!("builder-api-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let scratch = Scratch(dir.clone());
        let root = std::fs::canonicalize(&dir).expect("canonical scratch dir");
        let data = root.join("data");
        std::fs::create_dir_all(data.join("mirrors/1.git")).expect("mkdir");
        std::fs::create_dir_all(root.join("srv/git")).expect("mkdir");
        let link = |target: &str, at: &str| {
            std::os::unix::fs::symlink(root.join(target), root.join(at)).expect("symlink")
        };
        link("data/mirrors", "srv/mirrors");
        link("data/not-yet", "srv/dangling");
        link("srv/loop-b", "srv/loop-a");
        link("srv/loop-a", "srv/loop-b");
        (scratch, root)
    }

    #[test]
    fn local_paths_resolve_through_symlinks_dot_dot_and_missing_parts() {
        let (_dir, root) = layout();
        let data = root.join("data");
        for (path, expected) in [
            ("srv/mirrors/1.git", data.join("mirrors/1.git")),
            (
                "srv/mirrors/new/deeper.git",
                data.join("mirrors/new/deeper.git"),
            ),
            ("srv/git/../../data/keys", data.join("keys")),
            ("srv/nothing/../../data", data.clone()),
            ("srv/dangling/x.git", data.join("not-yet/x.git")),
            ("srv/./git", root.join("srv/git")),
        ] {
            assert_eq!(resolve_local(&root.join(path)), expected, "{path}");
        }
        // A loop ends instead of recursing forever, and leads nowhere protected.
        let looped = resolve_local(&root.join("srv/loop-a/x"));
        assert!(!looped.starts_with(&data), "{}", looped.display());
    }

    #[test]
    fn no_local_url_reaches_builders_own_state() {
        let (_dir, root) = layout();
        let policy = UrlPolicy::new(vec![root.join("data")], None);
        let check = |url: String| policy.check(&url, &resolve_local);
        for path in [
            "data/mirrors/1.git",
            "srv/mirrors/1.git",
            "srv/mirrors",
            "srv/git/../../data/keys",
            "srv/dangling/x",
        ] {
            let path = root.join(path).display().to_string();
            assert!(check(path.clone()).is_err(), "{path}");
            assert!(check(format!("file://{path}")).is_err(), "file://{path}");
        }
        // `git` opens `<path>.git` when `<path>` is no repository.
        std::os::unix::fs::symlink(root.join("data/mirrors/1.git"), root.join("srv/app.git"))
            .expect("symlink");
        assert!(check(root.join("srv/app").display().to_string()).is_err());
        assert_eq!(
            check(root.join("srv/git/app.git").display().to_string()),
            Ok(())
        );
    }

    #[test]
    fn secrets_for_plain_http_remotes_must_stay_on_this_machine() {
        let token = Credential::Token {
            token: "tok-SECRET".into(),
            username: None,
        };
        let oauth = Credential::Oauth {
            token: "oauth-SECRET".into(),
            refresh_token: None,
        };
        let basic = Credential::Basic {
            username: "u".into(),
            password: "pw-SECRET".into(),
        };
        for c in [&token, &oauth, &basic] {
            let err = check_credential_transport("http://git.example/x.git", c).unwrap_err();
            assert!(
                err.to_string().contains("invalid_argument: credential:"),
                "{err}"
            );
            assert!(!err.to_string().contains("SECRET"), "{err}");
            for ok in [
                "https://git.example/x.git",
                "http://127.0.0.1:8080/x.git",
                "http://localhost/x.git",
            ] {
                assert!(check_credential_transport(ok, c).is_ok(), "{ok}");
            }
        }
    }

    #[test]
    fn a_forge_api_base_that_would_leak_the_token_is_refused_by_name() {
        for bad in [
            "http://attacker.example/api",
            "https://u:p@host/api",
            "nope",
        ] {
            let props = BTreeMap::from([(FORGE_API_BASE_PROPERTY.to_owned(), bad.to_owned())]);
            let err = validate_properties(&props).unwrap_err().to_string();
            assert!(err.contains("properties: forge_api_base"), "{bad}: {err}");
        }
        let props = BTreeMap::from([(
            FORGE_API_BASE_PROPERTY.to_owned(),
            "http://127.0.0.1:9/api/v4".to_owned(),
        )]);
        assert!(validate_properties(&props).is_ok());
    }
}
