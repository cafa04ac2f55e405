use super::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;

fn minted(value: &str, id: &str) -> MintedToken {
    MintedToken {
        value: SecretString::from(value.to_string()),
        token_id: id.into(),
        created_at: crate::clock::now(),
        expires_at: None,
    }
}

#[tokio::test]
async fn save_load_remove_with_private_modes() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let j = Journal::open(&state).unwrap();
    assert_eq!(
        fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let mut e = Entry::new("ci/org.x", "tfc", "organization");
    e.rotation = Some(Rotation {
        started_at: crate::clock::now(),
        phase: Phase::Minted,
        label: None,
        minted: Some(minted("VALUE-xyz", "at-1")),
        stored: vec![],
        replaces: None,
        probe_failures: 0,
        own_credential: false,
    });
    j.save(&e).await.unwrap();
    let file = state.join("journal.log");
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(disk::read_stored(&state, "ci/org.x").unwrap().is_some());
    let back = j.load("ci/org.x").await.unwrap().unwrap();
    assert_eq!(
        back.rotation.unwrap().minted.unwrap().value.expose_secret(),
        "VALUE-xyz"
    );
    assert!(!format!("{e:?}").contains("VALUE-xyz"));
    e.rotation = None;
    j.save(&e).await.unwrap();
    assert!(
        j.load("ci/org.x").await.unwrap().is_none(),
        "an idle entry is compacted away"
    );
    assert!(store_is_empty(&state));
}

fn store_is_empty(state: &std::path::Path) -> bool {
    ["ci/org.x", "tok"]
        .iter()
        .all(|t| disk::read_stored(state, t).unwrap().is_none())
}

#[tokio::test]
async fn state_key_seals_entries_and_a_wrong_key_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let key = JournalKey::parse(&SecretString::from("11".repeat(32))).unwrap();
    let j = Journal::open(&state).unwrap().with_key(Some(key.clone()));
    let mut e = Entry::new("tok", "tfc", "team");
    e.sweep = true;
    e.revocations.push(PendingRevocation {
        token_id: "at-secretive".into(),
        not_before: crate::clock::now(),
        after_use_of: None,
        attempts: 0,
        held: false,
        ..Default::default()
    });
    j.save(&e).await.unwrap();
    let stored = disk::read_stored(&state, "tok").unwrap().unwrap();
    let raw = String::from_utf8(stored.clone()).unwrap();
    let log = fs::read(state.join("journal.log")).unwrap();
    assert!(
        !log.windows(b"at-secretive".len())
            .any(|w| w == b"at-secretive"),
        "nothing of it in the clear in the log"
    );
    assert!(
        raw.contains("xchacha20poly1305") && !raw.contains("at-secretive"),
        "sealed on disk"
    );
    assert_eq!(
        j.load("tok").await.unwrap().unwrap().revocations[0].token_id,
        "at-secretive"
    );
    drop(j);
    let wrong = JournalKey::parse(&SecretString::from("22".repeat(32))).unwrap();
    let j = reopen(&state).await.with_key(Some(wrong));
    assert!(matches!(
        j.load("tok").await,
        Err(JournalError::Corrupt { .. })
    ));
    drop(j);
    let j = reopen(&state).await;
    let err = j.load("tok").await.unwrap_err().to_string();
    assert!(err.contains("state_key"), "{err}");
    assert!(JournalKey::parse(&SecretString::from("short".to_string())).is_err());
    drop(j);
    // A plain entry planted next to sealed ones (as a file of the old layout, which opening moves into the log)
    // is refused while a key is set.
    fs::create_dir(state.join("journal")).unwrap();
    fs::write(
        state.join("journal").join("planted.json"),
        serde_json::to_vec(&Entry::new("planted", "tfc", "team")).unwrap(),
    )
    .unwrap();
    let j = reopen(&state).await.with_key(Some(key.clone()));
    let err = j.load("planted").await.unwrap_err().to_string();
    assert!(err.contains("not encrypted"), "{err}");
    // An entry copied over another token's is refused too.
    drop(j);
    fs::create_dir(state.join("journal")).unwrap();
    fs::write(state.join("journal").join("other.json"), &stored).unwrap();
    let j = reopen(&state).await.with_key(Some(key));
    let err = j.load("other").await.unwrap_err().to_string();
    assert!(err.contains("cannot decrypt"), "{err}");
}

#[test]
fn second_daemon_is_refused_and_open_dirs_rejected() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let _first = Journal::open(&state).unwrap();
    assert!(matches!(
        Journal::open(&state),
        Err(JournalError::Locked(_))
    ));
    let open = root.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(matches!(
        Journal::open(&open),
        Err(JournalError::Permissions { .. })
    ));
}

#[tokio::test]
async fn a_failed_write_is_held_in_memory_and_written_by_the_next_flush() {
    let store = Arc::new(MemoryStore::default());
    let j = Arc::new(Journal::new(store.clone()));
    let mut e = Entry::new("tok", "tfc", "organization");
    e.rotation = Some(Rotation {
        started_at: crate::clock::now(),
        phase: Phase::Minted,
        label: None,
        minted: Some(minted("VALUE-held", "at-2")),
        stored: vec![],
        replaces: None,
        probe_failures: 0,
        own_credential: false,
    });
    store.set_fault(Some(Box::new(|_| {
        Some(std::io::Error::from_raw_os_error(libc::EMFILE))
    })));
    let err = j.save(&e).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(
        store.read("tok").await.unwrap(),
        None,
        "nothing reached the store"
    );
    // Still there for the next visit, value included.
    let held = j.load("tok").await.unwrap().unwrap();
    assert_eq!(
        held.rotation.unwrap().minted.unwrap().value.expose_secret(),
        "VALUE-held"
    );
    store.set_fault(None);
    j.flush("tok").await.unwrap();
    assert!(
        store.read("tok").await.unwrap().is_some(),
        "written durably"
    );
    // A fresh journal over the same store (a restart) sees it.
    let again = Journal::new(store);
    assert!(again.load("tok").await.unwrap().unwrap().rotation.is_some());
}

/// Opens `state` again once the journal dropped just before has let go of its lock: a write it handed to the
/// blocking pool may still hold the store for a moment (bounded: 5 s).
async fn reopen(state: &std::path::Path) -> Journal {
    for _ in 0..500 {
        match Journal::open(state) {
            Err(JournalError::Locked(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            other => return other.unwrap(),
        }
    }
    panic!("the journal's lock was never released");
}

/// One visit of a token at a time; a waiter gets in when the holder leaves; the lock is forgotten once nobody holds
/// or waits for it, and a waiter that gave up leaves nothing that blocks the next visit.
#[tokio::test(start_paused = true)]
async fn visits_of_a_token_exclude_each_other_and_unused_locks_are_forgotten() {
    use std::time::Duration;
    let j = Arc::new(Journal::new(Arc::new(MemoryStore::default())));
    let first = j.visit("a").await;
    let other = j.visit("b").await;
    let waiter = {
        let j = j.clone();
        tokio::spawn(async move {
            let _g = j.visit("a").await;
            crate::clock::now()
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!waiter.is_finished(), "a second visit of `a` got in");
    drop(other);
    assert_eq!(lock(&j.visits).len(), 1, "`b` is forgotten, `a` is held");
    drop(first);
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter got in once the holder left")
        .unwrap();
    assert!(
        lock(&j.visits).is_empty(),
        "nobody holds or waits: forgotten"
    );
    // A waiter that gives up while `a` is held.
    let held = j.visit("a").await;
    let gave_up = tokio::time::timeout(Duration::from_secs(1), j.visit("a")).await;
    assert!(gave_up.is_err());
    drop(held);
    let again = tokio::time::timeout(Duration::from_secs(1), j.visit("a"))
        .await
        .expect("nothing left blocks the next visit");
    drop(again);
    assert!(lock(&j.visits).is_empty());
}

/// What the orphan sweep learns of the ids a token's records named: each id recognised, none of another's, a
/// repeated id kept once, and a later read replacing the earlier one.
#[test]
fn seen_ids_are_recognised_by_digest_and_replaced_by_the_next_read() {
    let j = Journal::new(Arc::new(MemoryStore::default()));
    let name: Arc<str> = Arc::from("ci");
    assert_eq!(j.seen("ci"), None, "never read");
    j.note_seen(&name, ["at-one", "at-one"]);
    assert_eq!(j.seen("ci"), Some(HashSet::from([id_digest("at-one")])));
    j.note_seen(&name, ["at-two", "at-one", "at-three"]);
    let seen = j.seen("ci").unwrap();
    assert_eq!(seen.len(), 3);
    assert!(["at-one", "at-two", "at-three"]
        .iter()
        .all(|id| seen.contains(&id_digest(id))));
    assert!(!seen.contains(&id_digest("at-four")));
    j.note_seen(&name, []);
    assert_eq!(j.seen("ci"), Some(HashSet::new()), "read, naming nothing");
    assert_eq!(j.seen("other"), None);
}
