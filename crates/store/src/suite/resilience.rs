//! When the database goes away, and what is left on disk: an outage is answered
//! "unavailable" quickly and the store recovers by itself; the SQLite files are private.

use super::*;
use crate::{CircuitSettings, StoreSettings, open_with};
use builder_testkit::CutProxy;
use std::net::SocketAddr;
use std::time::{Duration as StdDuration, Instant};

/// The fixture's URL with its host and port replaced by the proxy's.
fn through(url: &str, proxy: &CutProxy) -> String {
    let target = proxy.target().to_string();
    assert!(url.contains(&target), "{url} does not name {target}");
    url.replacen(&target, &proxy.addr().to_string(), 1)
}

fn pg_address(url: &str) -> SocketAddr {
    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("PostgreSQL URL");
    let host = match options.get_host() {
        "localhost" => "127.0.0.1",
        host => host,
    };
    format!("{host}:{}", options.get_port())
        .parse()
        .expect("the test server is reached by IP address")
}

/// With the server gone, a call is answered "unavailable" within the acquire timeout instead
/// of sqlx's 30 s; after `failure_threshold` of them the circuit answers at once; once the
/// server is back, a probe closes the circuit and nothing written before is lost.
/// PostgreSQL only: SQLite is a file, with no server to lose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_answered_fast_and_recovers() {
    let fixture = &Fixture::postgres().await;
    let url = fixture.url.clone().expect("a PostgreSQL URL");
    // Migrated directly, so the proxied store below only serves requests.
    drop(fixture.open().await);
    let mut proxy = CutProxy::start(pg_address(&url)).expect("proxy");
    let settings = StoreSettings {
        acquire_timeout: StdDuration::from_secs(1),
        circuit: CircuitSettings {
            failure_threshold: 2,
            probe_interval: StdDuration::from_millis(300),
        },
    };
    let cipher = CredentialCipher::new("test-a", &KEY_A).expect("cipher");
    let store = open_with(
        Some(&through(&url, &proxy)),
        fixture.dir.path(),
        false,
        cipher,
        settings,
    )
    .await
    .expect("open through the proxy");
    let feature = create(&store, NewFeature::default()).await;

    proxy.cut();
    for attempt in 1..=2 {
        let started = Instant::now();
        let err = store
            .get_feature(feature.id)
            .await
            .expect_err("the database is gone");
        assert!(err.is_unavailable(), "attempt {attempt}: {err:?}");
        assert!(
            started.elapsed() < StdDuration::from_secs(5),
            "attempt {attempt} took {:?}: the acquire timeout is 1 s",
            started.elapsed()
        );
    }
    // The circuit is open now: no more waiting.
    let started = Instant::now();
    let err = store
        .get_feature(feature.id)
        .await
        .expect_err("the circuit is open");
    assert!(
        started.elapsed() < StdDuration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert!(store.ping().await.is_err());

    proxy.restore().expect("proxy listens again");
    let deadline = Instant::now() + StdDuration::from_secs(15);
    while let Err(e) = store.ping().await {
        assert!(Instant::now() < deadline, "never recovered: {e}");
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    assert_eq!(
        store.get_feature(feature.id).await.expect("get"),
        Some(feature.clone()),
        "nothing was lost"
    );
    create(&store, NewFeature::default()).await;
}

/// The database file and its -wal and -shm are owner-only from creation, and a looser file
/// left by an older version is tightened at the next open.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("fresh").join("data");
    let mode = |name: &str| {
        std::fs::metadata(data.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    let cipher = || CredentialCipher::new("test-a", &KEY_A).expect("cipher");
    let store = open_with_cipher(None, &data, true, cipher())
        .await
        .expect("open");
    create(&store, NewFeature::default()).await;
    assert_eq!(mode(""), 0o700, "the data directory it created");
    for name in ["builder.db", "builder.db-wal", "builder.db-shm"] {
        assert_eq!(mode(name), 0o600, "{name}");
    }
    drop(store);

    for name in ["builder.db", "builder.db-wal", "builder.db-shm"] {
        let _ = std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(0o644));
    }
    let store = open_with_cipher(None, &data, true, cipher())
        .await
        .expect("reopen");
    assert_eq!(mode("builder.db"), 0o600, "tightened on open");
    create(&store, NewFeature::default()).await;
    for name in ["builder.db-wal", "builder.db-shm"] {
        assert_eq!(mode(name), 0o600, "{name}");
    }
}
