//! Behaviour one backend has and the other does not need.

use super::*;

/// Another process's append (a second store on the same database) wakes our subscribers
/// through LISTEN/NOTIFY, not only the in-process channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notifications_cross_processes() {
    let fixture = Fixture::postgres().await;
    let ours = fixture.open().await;
    let theirs = fixture.open().await;
    let mut rx = ours.notifications();
    rx.borrow_and_update();
    let (f, e) = requested(NewFeature::default());
    let stored = theirs.append(f.id, 0, &e, &f).await.expect("append");
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while *rx.borrow_and_update() < stored[0].global_position {
            rx.changed().await.expect("sender alive");
        }
    })
    .await
    .expect("woken by the other store's NOTIFY within 5 s");
}

/// Everything survives closing and reopening the file, and the generated key file is private.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reopen_keeps_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cipher = || CredentialCipher::from_lookup(|_| None, dir.path()).expect("cipher");
    let (f, events, repo) = {
        let store = crate::SqliteStore::open(&dir.path().join("builder.db"), cipher())
            .await
            .expect("open");
        store.migrate().await.expect("migrate");
        let (f, e1) = requested(NewFeature {
            correlation_id: "durable",
            idempotency_key: "durable-key",
            ..Default::default()
        });
        let mut events = store.append(f.id, 0, &e1, &f).await.expect("append");
        let (f, e2) = next(&f, vec![Event::AnalysisStarted {}], base_time());
        events.extend(store.append(f.id, 1, &e2, &f).await.expect("append"));
        let repo = repository("durable");
        store.create_repository(&repo).await.expect("create");
        store
            .set_credential(repo.id, "TOKEN", &SecretBytes::from("s3cret"))
            .await
            .expect("set");
        store.close().await;
        (f, events, repo)
    };
    let key_file = dir.path().join("keys").join("local-1.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file)
            .expect("key file exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "key file mode is {:o}", mode & 0o777);
    }
    let key_before = std::fs::read(&key_file).expect("key");

    let store = open_with_cipher(None, dir.path(), true, cipher())
        .await
        .expect("reopen");
    assert_eq!(
        std::fs::read(&key_file).expect("key"),
        key_before,
        "key reused"
    );
    assert_eq!(store.read_stream(f.id, 0).await.expect("read"), events);
    assert_eq!(store.read_all(0, 0).await.expect("read"), events);
    assert_eq!(store.get_feature(f.id).await.expect("get"), Some(f.clone()));
    assert_eq!(
        store
            .find_by_idempotency_key("durable-key")
            .await
            .expect("find"),
        Some(f.clone())
    );
    assert_eq!(
        store.non_terminal_features().await.expect("list"),
        vec![f.id]
    );
    assert_eq!(
        *store.notifications().borrow(),
        events[1].global_position,
        "the head position is restored"
    );
    let mut stored_repo = stored(&repo);
    stored_repo.credential_type = Some("TOKEN".into());
    assert_eq!(
        store.get_repository(repo.id).await.expect("get"),
        Some(stored_repo)
    );
    let (_, secret) = store
        .get_credential(repo.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(secret.expose(), b"s3cret");

    // New positions continue after the old ones.
    let (f2, e3) = next(&f, vec![cancelled()], base_time());
    let more = store.append(f.id, 2, &e3, &f2).await.expect("append");
    assert!(more[0].global_position > events[1].global_position);
}

/// `open` picks the backend from the URL and runs migrations when asked.
#[tokio::test]
async fn open_accepts_sqlite_urls_and_refuses_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nested").join("x.db");
    let url = format!("sqlite://{}", path.display());
    let cipher = || CredentialCipher::new("k", &KEY_A).expect("cipher");
    let store = open_with_cipher(Some(&url), dir.path(), true, cipher())
        .await
        .expect("open");
    assert!(store.read_all(0, 0).await.expect("read").is_empty());
    assert!(path.exists());
    match open_with_cipher(Some("sqlite::memory:"), dir.path(), true, cipher()).await {
        Err(StoreError::Config { variable, .. }) => assert_eq!(variable, "DATABASE_URL"),
        other => panic!("in-memory must be refused, got {:?}", other.err()),
    }
}
