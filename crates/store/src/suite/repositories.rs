//! Registered repositories and their credentials.

use super::*;

fn matching(text: &str) -> RepositoryQuery {
    RepositoryQuery {
        query: Some(text.into()),
        ..Default::default()
    }
}

pub(crate) async fn repository_crud(store: Arc<dyn Store>) {
    let alpha = repository("alpha");
    store.create_repository(&alpha).await.expect("create");
    assert_eq!(
        store.get_repository(alpha.id).await.expect("get"),
        Some(stored(&alpha))
    );
    assert_eq!(
        store.get_repository_by_name("alpha").await.expect("get"),
        Some(stored(&alpha))
    );
    assert_eq!(
        store.get_repository_by_name("Alpha").await.expect("get"),
        None
    );
    assert_eq!(
        store
            .get_repository(RepositoryId(Uuid::now_v7()))
            .await
            .expect("get"),
        None
    );

    match store.create_repository(&repository("alpha")).await {
        Err(StoreError::AlreadyExists { what }) => assert!(what.contains("alpha"), "{what}"),
        other => panic!("a taken name must be refused, got {other:?}"),
    }
    let mut same_id = repository("gamma");
    same_id.id = alpha.id;
    assert!(matches!(
        store.create_repository(&same_id).await,
        Err(StoreError::AlreadyExists { .. })
    ));

    let mut beta = repository("beta");
    beta.url = "git@gitlab.example.com:Team/Beta.git".into();
    beta.provider = Provider::Gitlab;
    beta.last_accessed_at = None;
    store.create_repository(&beta).await.expect("create");
    let names = |v: Vec<Repository>| v.into_iter().map(|r| r.name).collect::<Vec<_>>();
    assert_eq!(
        names(
            store
                .list_repositories(&RepositoryQuery::default())
                .await
                .expect("list")
        ),
        ["alpha", "beta"]
    );
    assert_eq!(
        names(
            store
                .list_repositories(&matching("ALP"))
                .await
                .expect("list")
        ),
        ["alpha"]
    );
    assert_eq!(
        names(
            store
                .list_repositories(&matching("team/beta"))
                .await
                .expect("list")
        ),
        ["beta"],
        "the URL is searched too"
    );
    assert_eq!(
        names(
            store
                .list_repositories(&RepositoryQuery {
                    limit: 1,
                    offset: 1,
                    ..Default::default()
                })
                .await
                .expect("list")
        ),
        ["beta"]
    );

    // Update everything but identity and credentials.
    let mut renamed = alpha.clone();
    renamed.name = "alpha-2".into();
    renamed.default_branch = "trunk".into();
    renamed.properties.insert("tier".into(), "1".into());
    renamed.state = RepositoryState::Inactive;
    renamed.updated_at = Utc::now();
    store.update_repository(&renamed).await.expect("update");
    assert_eq!(
        store.get_repository(alpha.id).await.expect("get"),
        Some(stored(&renamed))
    );
    let mut clash = renamed.clone();
    clash.name = "beta".into();
    assert!(matches!(
        store.update_repository(&clash).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store.update_repository(&repository("ghost")).await,
        Err(StoreError::NotFound { .. })
    ));

    // Soft delete: still readable by id, gone from names and lists, name reusable.
    assert!(store.delete_repository(beta.id).await.expect("delete"));
    assert!(
        !store
            .delete_repository(beta.id)
            .await
            .expect("delete again")
    );
    assert!(
        !store
            .delete_repository(RepositoryId(Uuid::now_v7()))
            .await
            .expect("delete missing")
    );
    let gone = store
        .get_repository(beta.id)
        .await
        .expect("get")
        .expect("still there");
    assert_eq!(gone.state, RepositoryState::Deleted);
    assert_eq!(
        store.get_repository_by_name("beta").await.expect("get"),
        None
    );
    assert_eq!(
        names(
            store
                .list_repositories(&RepositoryQuery::default())
                .await
                .expect("list")
        ),
        ["alpha-2"]
    );
    let beta_again = repository("beta");
    store
        .create_repository(&beta_again)
        .await
        .expect("a deleted repository's name is free again");
    assert_eq!(
        store
            .get_repository_by_name("beta")
            .await
            .expect("get")
            .map(|r| r.id),
        Some(beta_again.id)
    );
}

pub(crate) async fn credentials_are_encrypted_at_rest(fixture: &Fixture) {
    let store = fixture.open().await;
    let secret = "ghp_THIS-IS-THE-PLAINTEXT-TOKEN-0123456789";
    let repo = repository("secretive");
    assert!(matches!(
        store
            .set_credential(repo.id, "TOKEN", &SecretBytes::from(secret))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    store.create_repository(&repo).await.expect("create");
    assert!(store.get_credential(repo.id).await.expect("get").is_none());
    assert!(matches!(
        store
            .set_credential(repo.id, " ", &SecretBytes::from(secret))
            .await,
        Err(StoreError::Invalid(_))
    ));

    store
        .set_credential(repo.id, "TOKEN", &SecretBytes::from(secret))
        .await
        .expect("set");
    let (kind, got) = store
        .get_credential(repo.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(kind, "TOKEN");
    assert_eq!(got.expose(), secret.as_bytes());
    assert_eq!(format!("{got:?}"), "<redacted>");
    assert_eq!(
        store
            .get_repository(repo.id)
            .await
            .expect("get")
            .and_then(|r| r.credential_type),
        Some("TOKEN".to_string())
    );

    let raw = fixture.raw_credentials().await;
    assert_eq!(raw.len(), 1);
    let (key_id, wrapped, ciphertext) = &raw[0];
    assert_eq!(
        key_id, "test-a",
        "the key id is stored next to the ciphertext"
    );
    for column in [wrapped, ciphertext] {
        assert!(
            !column.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "plaintext found in the database"
        );
        assert!(!column.windows(8).any(|w| w == &secret.as_bytes()[4..12]));
    }

    // Replacing a credential replaces it.
    store
        .set_credential(repo.id, "BASIC", &SecretBytes::from("user:pass"))
        .await
        .expect("replace");
    let (kind, got) = store
        .get_credential(repo.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!((kind.as_str(), got.expose()), ("BASIC", &b"user:pass"[..]));

    // Another process with the wrong key-encryption key cannot read it, and says why.
    let wrong = fixture
        .open_with(CredentialCipher::new("test-a", &KEY_B).expect("cipher"))
        .await;
    match wrong.get_credential(repo.id).await {
        Err(StoreError::Crypto(msg)) => {
            assert!(
                msg.contains("test-a") && msg.contains("does not match"),
                "{msg}"
            )
        }
        other => panic!("expected a decryption error, got {other:?}"),
    }
    let unknown = fixture
        .open_with(CredentialCipher::new("test-b", &KEY_A).expect("cipher"))
        .await;
    match unknown.get_credential(repo.id).await {
        Err(StoreError::Crypto(msg)) => assert!(msg.contains("not configured"), "{msg}"),
        other => panic!("expected an unknown-key error, got {other:?}"),
    }
    // After rotation, the old key still opens what it sealed.
    let rotated = fixture
        .open_with(
            CredentialCipher::new("test-b", &KEY_B)
                .and_then(|c| c.with_decrypt_key("test-a", &KEY_A))
                .expect("cipher"),
        )
        .await;
    let (_, got) = rotated
        .get_credential(repo.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.expose(), b"user:pass");

    // Deleting the repository destroys its credential.
    assert!(store.delete_repository(repo.id).await.expect("delete"));
    assert!(store.get_credential(repo.id).await.expect("get").is_none());
    assert!(fixture.raw_credentials().await.is_empty());
}

/// A credential dropped (its repository's forge API moved) is gone from the table, not just
/// hidden, and the repository says it has none until one is set again.
pub(crate) async fn clearing_a_credential_destroys_it(fixture: &Fixture) {
    let store = fixture.open().await;
    let repo = repository("rebound");
    store.create_repository(&repo).await.expect("create");
    assert!(
        !store
            .clear_credential(repo.id)
            .await
            .expect("clear nothing")
    );
    store
        .set_credential(repo.id, "TOKEN", &SecretBytes::from("tok-to-drop"))
        .await
        .expect("set");
    assert!(store.clear_credential(repo.id).await.expect("clear"));
    assert!(store.get_credential(repo.id).await.expect("get").is_none());
    assert!(fixture.raw_credentials().await.is_empty());
    let stored = store.get_repository(repo.id).await.expect("get");
    assert_eq!(stored.and_then(|r| r.credential_type), None);
    // It can be given again.
    store
        .set_credential(repo.id, "TOKEN", &SecretBytes::from("tok-again"))
        .await
        .expect("set again");
    let (kind, _) = store
        .get_credential(repo.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(kind, "TOKEN");
}

/// The state filter is part of the query: DELETED rows can be listed when asked for, the
/// default leaves them out, and a filtered page is full even when rows of other states sort
/// between the ones it wants.
pub(crate) async fn listing_filters_states_in_the_query(store: Arc<dyn Store>) {
    // Names sort a-active, b-deleted, c-inactive, d-deleted, e-active, f-deleted.
    let mut ids = BTreeMap::new();
    for (name, state) in [
        ("a-active", RepositoryState::Active),
        ("b-deleted", RepositoryState::Deleted),
        ("c-inactive", RepositoryState::Inactive),
        ("d-deleted", RepositoryState::Deleted),
        ("e-active", RepositoryState::Active),
        ("f-deleted", RepositoryState::Deleted),
    ] {
        let repo = repository(name);
        store.create_repository(&repo).await.expect("create");
        if state == RepositoryState::Deleted {
            assert!(store.delete_repository(repo.id).await.expect("delete"));
        } else if state == RepositoryState::Inactive {
            let mut inactive = repo.clone();
            inactive.state = state;
            store.update_repository(&inactive).await.expect("update");
        }
        ids.insert(name, repo.id);
    }
    let list = |states: Vec<RepositoryState>, limit: u32, offset: u32| {
        let store = store.clone();
        async move {
            store
                .list_repositories(&RepositoryQuery {
                    query: None,
                    states,
                    limit,
                    offset,
                })
                .await
                .expect("list")
                .into_iter()
                .map(|r| (r.name, r.state))
                .collect::<Vec<_>>()
        }
    };
    use RepositoryState::{Active, Deleted, Inactive};
    assert_eq!(
        list(vec![], 0, 0).await,
        [
            ("a-active".to_string(), Active),
            ("c-inactive".to_string(), Inactive),
            ("e-active".to_string(), Active)
        ],
        "no states: everything but DELETED"
    );
    assert_eq!(
        list(vec![Deleted], 0, 0).await,
        [
            ("b-deleted".to_string(), Deleted),
            ("d-deleted".to_string(), Deleted),
            ("f-deleted".to_string(), Deleted)
        ],
        "DELETED when asked for"
    );
    assert_eq!(
        list(vec![Deleted], 2, 0).await.len(),
        2,
        "a page of DELETED is full although ACTIVE rows sort between them"
    );
    assert_eq!(
        list(vec![Active], 2, 0).await,
        [
            ("a-active".to_string(), Active),
            ("e-active".to_string(), Active)
        ],
        "the page limit counts matching rows only"
    );
    assert_eq!(
        list(vec![Active], 1, 1).await,
        [("e-active".to_string(), Active)],
        "offsets count matching rows only"
    );
    assert_eq!(
        list(vec![Inactive, Deleted], 0, 0)
            .await
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>(),
        ["b-deleted", "c-inactive", "d-deleted", "f-deleted"]
    );
    // The text filter and the state filter together.
    assert_eq!(
        store
            .list_repositories(&RepositoryQuery {
                query: Some("D-DEL".into()),
                states: vec![Deleted],
                ..Default::default()
            })
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        [ids["d-deleted"]]
    );
}
