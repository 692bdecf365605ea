//! The store's semantics: pairs appended and refitted, reads, deletes with tombstones, imports,
//! versioned reload writes, dimension checks on open, group commit and refit failures.

mod store_common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lore_serve::store::{Refit, Store, StoreError};
use store_common::{check_consistent, expected_weights, refit, row, SumRefit};

const F: usize = 6;
const K: usize = 3;

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, F, K).expect("open store")
}

#[tokio::test]
async fn add_pairs_appends_refits_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let refit = refit(F, K);
    assert_eq!(store.get("alice").unwrap(), None);

    let first: Vec<f32> = [row(1, 0, F), row(1, 1, F)].concat();
    let user = store
        .add_pairs("alice", first.clone(), refit.clone())
        .await
        .unwrap();
    assert_eq!(user.user_id, "alice");
    assert_eq!(user.pairs, 2);
    assert_eq!(user.version, 1);
    assert_eq!(user.model_version, "m1");
    assert!(!user.imported);
    assert_eq!(user.weights, expected_weights(&first, F, K));

    let second = row(1, 2, F);
    let user = store
        .add_pairs("alice", second.clone(), refit.clone())
        .await
        .unwrap();
    let all = [first, second].concat();
    assert_eq!(user.pairs, 3);
    assert_eq!(user.version, 2);
    assert_eq!(user.weights, expected_weights(&all, F, K));
    // Stored as given, in order, bit for bit.
    assert_eq!(store.pairs("alice").unwrap(), all);
    assert_eq!(store.get("alice").unwrap(), Some(user));
    assert_eq!(store.user_count(), 1);
    assert_eq!(store.user_ids().unwrap(), vec!["alice".to_string()]);
    assert!(store.commits() >= 2);
    check_consistent(&store, F, K);

    // Everything is there after a reopen.
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.pairs("alice").unwrap(), all);
    assert_eq!(store.get("alice").unwrap().unwrap().pairs, 3);
    assert_eq!(store.user_count(), 1);
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let refit = refit(F, K);
    let long = "x".repeat(257);
    let ok_id = "é".repeat(128); // 256 bytes
    for (id, rows) in [
        ("", row(0, 0, F)),
        (long.as_str(), row(0, 0, F)),
        ("bob", vec![]),
        ("bob", vec![1.0; F + 1]),
        ("bob", [row(0, 0, F), vec![f32::NAN]].concat()),
        ("bob", {
            let mut r = row(0, 0, F);
            r[2] = f32::INFINITY;
            r
        }),
    ] {
        let err = store.add_pairs(id, rows, refit.clone()).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::InvalidUserId(_) | StoreError::InvalidInput(_)
            ),
            "{err}"
        );
    }
    assert!(matches!(
        store.get(&long),
        Err(StoreError::InvalidUserId(_))
    ));
    assert_eq!(store.user_count(), 0);
    assert_eq!(store.commits(), 0);
    // 256 bytes of UTF-8 is accepted.
    let user = store.add_pairs(&ok_id, row(0, 0, F), refit).await.unwrap();
    assert_eq!(user.pairs, 1);
    assert!(matches!(
        store
            .import(vec![("carol".into(), vec![1.0; K + 1])], "m1")
            .await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        store
            .set_weights(vec![(ok_id.clone(), 1, vec![f32::NAN; K])], "m2")
            .await,
        Err(StoreError::InvalidInput(_))
    ));
    assert_eq!(store.get(&ok_id).unwrap().unwrap().version, 1);
}

#[tokio::test]
async fn delete_removes_everything_and_leaves_a_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let refit = refit(F, K);
    let rows = [row(2, 0, F), row(2, 1, F)].concat();
    let before = store.add_pairs("dave", rows, refit.clone()).await.unwrap();
    store
        .add_pairs("erin", row(3, 0, F), refit.clone())
        .await
        .unwrap();
    assert!(!store.is_deleted("dave").unwrap());

    assert!(store.delete("dave").await.unwrap());
    assert_eq!(store.get("dave").unwrap(), None);
    assert!(store.pairs("dave").unwrap().is_empty());
    assert!(store.is_deleted("dave").unwrap());
    assert_eq!(store.user_count(), 1);
    assert!(!store.delete("dave").await.unwrap(), "second delete");
    // The neighbour is untouched.
    assert_eq!(store.pairs("erin").unwrap(), row(3, 0, F));

    // An import does not bring a deleted user back.
    let n = store
        .import(vec![("dave".into(), vec![9.0; K])], "m1")
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(store.get("dave").unwrap(), None);

    // Posting again starts from nothing, with a newer version.
    let again = store
        .add_pairs("dave", row(2, 5, F), refit.clone())
        .await
        .unwrap();
    assert_eq!(again.pairs, 1);
    assert!(again.version > before.version);
    assert_eq!(store.pairs("dave").unwrap(), row(2, 5, F));
    assert!(!store.is_deleted("dave").unwrap());
    check_consistent(&store, F, K);

    // Durable across a reopen.
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.pairs("dave").unwrap(), row(2, 5, F));
    assert!(store.delete("erin").await.unwrap());
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.get("erin").unwrap(), None);
    assert!(store.is_deleted("erin").unwrap());
}

#[tokio::test]
async fn import_skips_users_with_pairs_and_later_imports_win() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let refit = refit(F, K);
    store
        .add_pairs("has_pairs", row(4, 0, F), refit.clone())
        .await
        .unwrap();
    let n = store
        .import(
            vec![
                ("has_pairs".into(), vec![7.0; K]),
                ("fresh".into(), vec![1.0, 2.0, 3.0]),
            ],
            "offline",
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let fresh = store.get("fresh").unwrap().unwrap();
    assert_eq!(fresh.weights, vec![1.0, 2.0, 3.0]);
    assert!(fresh.imported);
    assert_eq!(fresh.pairs, 0);
    assert_eq!(fresh.model_version, "offline");
    assert_eq!(
        store.get("has_pairs").unwrap().unwrap().weights,
        expected_weights(&row(4, 0, F), F, K)
    );

    // A later import of the same user replaces the earlier one.
    store
        .import(vec![("fresh".into(), vec![4.0, 5.0, 6.0])], "offline2")
        .await
        .unwrap();
    let fresh2 = store.get("fresh").unwrap().unwrap();
    assert_eq!(fresh2.weights, vec![4.0, 5.0, 6.0]);
    assert_eq!(fresh2.version, fresh.version + 1);

    // Posting pairs replaces imported weights with the refit.
    let posted = store
        .add_pairs("fresh", row(5, 0, F), refit.clone())
        .await
        .unwrap();
    assert!(!posted.imported);
    assert_eq!(posted.pairs, 1);
    assert_eq!(posted.weights, expected_weights(&row(5, 0, F), F, K));
    assert_eq!(posted.version, fresh2.version + 1);
    assert_eq!(store.user_count(), 2);
    check_consistent(&store, F, K);
}

#[tokio::test]
async fn set_weights_applies_only_to_the_expected_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let refit = refit(F, K);
    let a = store
        .add_pairs("a", row(6, 0, F), refit.clone())
        .await
        .unwrap();
    let b = store
        .add_pairs("b", row(7, 0, F), refit.clone())
        .await
        .unwrap();
    // b moves on while the "reload" computed its weights.
    let b2 = store
        .add_pairs("b", row(7, 1, F), refit.clone())
        .await
        .unwrap();
    let n = store
        .set_weights(
            vec![
                ("a".into(), a.version, vec![0.5; K]),
                ("b".into(), b.version, vec![0.25; K]),
                ("nobody".into(), 1, vec![0.125; K]),
            ],
            "m2",
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let a2 = store.get("a").unwrap().unwrap();
    assert_eq!(a2.weights, vec![0.5; K]);
    assert_eq!(a2.model_version, "m2");
    assert_eq!(a2.version, a.version + 1);
    assert_eq!(a2.pairs, 1);
    assert_eq!(store.get("b").unwrap().unwrap(), b2);
    assert_eq!(store.get("nobody").unwrap(), None);
}

#[tokio::test]
async fn drop_imported_without_pairs_keeps_users_with_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let refit = refit(F, K);
    store
        .import(
            vec![
                ("i1".into(), vec![1.0; K]),
                ("i2".into(), vec![2.0; K]),
                ("i3".into(), vec![3.0; K]),
            ],
            "m1",
        )
        .await
        .unwrap();
    store
        .add_pairs("i2", row(8, 0, F), refit.clone())
        .await
        .unwrap();
    store
        .add_pairs("posted", row(9, 0, F), refit.clone())
        .await
        .unwrap();
    assert_eq!(store.user_count(), 4);
    assert_eq!(store.drop_imported_without_pairs().await.unwrap(), 2);
    assert_eq!(
        store.user_ids().unwrap(),
        vec!["i2".to_string(), "posted".to_string()]
    );
    assert_eq!(store.user_count(), 2);
    // Not tombstoned: a later import may bring them back.
    assert!(!store.is_deleted("i1").unwrap());
    assert_eq!(
        store
            .import(vec![("i1".into(), vec![1.0; K])], "m2")
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn a_store_for_other_dimensions_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .add_pairs("a", row(1, 0, F), refit(F, K))
        .await
        .unwrap();
    drop(store);
    let err = Store::open(dir.path(), F + 1, K).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Mismatch {
                what: "features F",
                stored: 6,
                requested: 7,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("features F is 6"), "{err}");
    let err = Store::open(dir.path(), F, K + 2).unwrap_err();
    assert!(
        matches!(err, StoreError::Mismatch { what: "rank K", .. }),
        "{err}"
    );
    // The refusal changed nothing.
    let store = open(dir.path());
    assert_eq!(store.pairs("a").unwrap(), row(1, 0, F));
    // A second open of the same folder while it is open is refused, not corrupting.
    let err = Store::open(dir.path(), F, K).unwrap_err();
    assert!(err.to_string().contains("already open"), "{err}");
}

#[test]
fn not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("lore.redb"),
        b"this is not a redb file at all......",
    )
    .unwrap();
    assert!(Store::open(dir.path(), F, K).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits_and_refit_calls() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let counting = Arc::new(SumRefit {
        delay: Duration::from_millis(20),
        ..SumRefit::new(F, K, "m1")
    });
    let refit: Arc<dyn Refit> = counting.clone();
    // 48 writers: 16 users, each posted by 3 writers at once.
    let mut tasks = Vec::new();
    for w in 0..48usize {
        let store = store.clone();
        let refit = refit.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("u{}", w % 16);
            let answer = store.add_pairs(&user, row(w, 0, F), refit).await.unwrap();
            (user, answer)
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let commits = store.commits();
    let calls = counting.calls.load(Ordering::SeqCst);
    assert!(
        commits < 48,
        "group commit: {commits} commits for 48 writes"
    );
    assert_eq!(calls as u64, commits, "one refit call per commit");
    for (user, answer) in &answers {
        assert_eq!(&answer.user_id, user);
        assert!(answer.pairs >= 1 && answer.pairs <= 3);
    }
    // Each user got all 3 pairs, each posted row exactly once.
    let users = check_consistent(&store, F, K);
    assert_eq!(users.len(), 16);
    for u in 0..16 {
        let stored = store.pairs(&format!("u{u}")).unwrap();
        let mut got: Vec<Vec<f32>> = stored.chunks_exact(F).map(<[f32]>::to_vec).collect();
        got.sort_by(|a, b| a[0].total_cmp(&b[0]));
        let want: Vec<Vec<f32>> = (0..3).map(|k| row(u + 16 * k, 0, F)).collect();
        assert_eq!(got, want, "u{u}");
    }
    // The last answer of each user carries all of their pairs.
    for u in 0..16 {
        let user = format!("u{u}");
        let max = answers
            .iter()
            .filter(|(id, _)| *id == user)
            .map(|(_, a)| a.pairs)
            .max();
        assert_eq!(max, Some(3), "{user}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_refit_fails_only_its_user_and_the_store_goes_on() {
    for panic in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let refit: Arc<dyn Refit> = Arc::new(SumRefit {
            poison: Some(12345.0),
            panic,
            delay: Duration::from_millis(5),
            ..SumRefit::new(F, K, "m1")
        });
        let mut bad = row(0, 0, F);
        bad[0] = 12345.0;
        let mut tasks = Vec::new();
        for w in 0..12usize {
            let store = store.clone();
            let refit = refit.clone();
            let rows = if w == 5 { bad.clone() } else { row(w, 0, F) };
            tasks.push(tokio::spawn(async move {
                store.add_pairs(&format!("w{w}"), rows, refit).await
            }));
        }
        for (w, t) in tasks.into_iter().enumerate() {
            let r = t.await.unwrap();
            if w == 5 {
                assert!(matches!(r, Err(StoreError::Refit(_))), "{r:?}");
            } else {
                assert_eq!(r.unwrap().pairs, 1, "w{w}");
            }
        }
        assert_eq!(store.get("w5").unwrap(), None);
        assert_eq!(store.user_count(), 11);
        check_consistent(&store, F, K);
        // Still usable.
        let ok = store.add_pairs("w5", row(5, 0, F), refit).await.unwrap();
        assert_eq!(ok.pairs, 1);
    }
}
