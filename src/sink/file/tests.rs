use super::*;
use crate::secret::SecretString;
use std::os::unix::fs::symlink;

type Hook = Option<Box<dyn Fn(&Path)>>;

thread_local! {
    /// Runs between the temporary file's fsync and the check-and-set (the slow step of a write).
    pub(super) static BEFORE_CHECK: std::cell::RefCell<Hook> = const { std::cell::RefCell::new(None) };
}

/// The review found the check-and-set done before the temporary file's fsync, which can take a long time:
/// another writer's change during the fsync was overwritten by the rename. The check now comes after it.
#[test]
fn a_change_during_the_slow_part_of_a_write_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FileSink::new(
        "files",
        &FileSinkConfig {
            directory: dir.path().to_path_buf(),
        },
    )
    .unwrap();
    let target = Target::Path("t.json".into());
    let record = |v: &str| SinkRecord {
        token: SecretString::from(v.to_string()),
        token_id: format!("id-{v}"),
        issuer: "i".into(),
        token_type: "team".into(),
        created_at: "2026-01-01T00:00:00Z".parse().unwrap(),
        expires_at: None,
    };
    sink.write_sync(&target, &record("first"), Version::Absent)
        .unwrap();
    let seen = sink.read_sync(&target).unwrap().version;
    BEFORE_CHECK.with(|h| {
        *h.borrow_mut() = Some(Box::new(|path: &Path| {
            fs::write(path, "someone else's content").unwrap();
        }))
    });
    let err = sink
        .write_sync(&target, &record("second"), seen)
        .unwrap_err();
    BEFORE_CHECK.with(|h| *h.borrow_mut() = None);
    assert_eq!(err.kind, SinkErrorKind::Conflict, "{err}");
    assert_eq!(
        fs::read_to_string(dir.path().join("t.json")).unwrap(),
        "someone else's content",
        "never overwritten"
    );
}

fn record(value: &str, id: &str) -> SinkRecord {
    SinkRecord {
        token: SecretString::from(value.to_string()),
        token_id: id.into(),
        issuer: "tfc".into(),
        token_type: "organization".into(),
        created_at: "2026-01-01T00:00:00Z".parse().unwrap(),
        expires_at: None,
    }
}

fn sink(dir: &Path) -> FileSink {
    FileSink::new(
        "files",
        &FileSinkConfig {
            directory: dir.to_path_buf(),
        },
    )
    .unwrap()
}

fn t(p: &str) -> Target {
    Target::Path(p.into())
}

#[tokio::test]
async fn writes_atomically_with_private_modes_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let s = sink(&dir);
    let o = s.read(&t("a/b/tok.json")).await.unwrap();
    assert_eq!(o.version, Version::Absent);
    assert!(matches!(o.content, Content::Absent));
    s.write(&t("a/b/tok.json"), &record("v1", "at-1"), Version::Absent)
        .await
        .unwrap();
    let file = dir.join("a/b/tok.json");
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for d in [dir.clone(), dir.join("a"), dir.join("a/b")] {
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
    let o = s.read(&t("a/b/tok.json")).await.unwrap();
    assert!(o.record().unwrap().same_as(&record("v1", "at-1")));
    // No temporary file is left behind.
    assert_eq!(fs::read_dir(dir.join("a/b")).unwrap().count(), 1);
    // A second write with the version just read replaces it.
    s.write(&t("a/b/tok.json"), &record("v2", "at-2"), o.version)
        .await
        .unwrap();
    let o2 = s.read(&t("a/b/tok.json")).await.unwrap();
    assert_eq!(o2.record().unwrap().token_id, "at-2");
}

#[tokio::test]
async fn a_concurrent_change_is_a_conflict_and_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let s = sink(tmp.path());
    s.write(&t("tok.json"), &record("v1", "at-1"), Version::Absent)
        .await
        .unwrap();
    let seen = s.read(&t("tok.json")).await.unwrap().version;
    fs::write(tmp.path().join("tok.json"), "{\"someone\":\"else\"}").unwrap();
    let e = s
        .write(&t("tok.json"), &record("v2", "at-2"), seen)
        .await
        .unwrap_err();
    assert_eq!(e.kind, SinkErrorKind::Conflict);
    assert_eq!(
        fs::read_to_string(tmp.path().join("tok.json")).unwrap(),
        "{\"someone\":\"else\"}"
    );
    // Absent expected, but a file exists: conflict too.
    let e = s
        .write(&t("tok.json"), &record("v2", "at-2"), Version::Absent)
        .await
        .unwrap_err();
    assert_eq!(e.kind, SinkErrorKind::Conflict);
}

#[tokio::test]
async fn garbage_is_reported_without_quoting_it() {
    let tmp = tempfile::tempdir().unwrap();
    let s = sink(tmp.path());
    fs::write(tmp.path().join("x.json"), "secret-looking-garbage").unwrap();
    fs::write(
        tmp.path().join("y.json"),
        "{\"token\":\"secret-looking-garbage\"}",
    )
    .unwrap();
    for name in ["x.json", "y.json"] {
        let o = s.read(&t(name)).await.unwrap();
        match o.content {
            Content::Garbage(why) => assert!(!why.contains("secret-looking"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(o.version, Version::Digest(_)));
    }
}

#[tokio::test]
async fn symlinks_that_escape_or_final_links_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(&outside).unwrap();
    symlink(&outside, dir.join("esc")).unwrap();
    let s = sink(&dir);
    let e = s
        .write(
            &t("esc/sub/tok.json"),
            &record("v", "at-1"),
            Version::Absent,
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("outside"), "{}", e.message);
    assert!(!outside.join("sub").exists(), "nothing created outside");
    assert!(s.read(&t("esc/tok.json")).await.is_err());
    // A final component that is a link (even to a file inside) is never written through.
    fs::write(outside.join("victim"), "keep").unwrap();
    symlink(outside.join("victim"), dir.join("link.json")).unwrap();
    let e = s
        .write(&t("link.json"), &record("v", "at-1"), Version::Unversioned)
        .await
        .unwrap_err();
    assert!(e.message.contains("symbolic link"), "{}", e.message);
    assert_eq!(fs::read_to_string(outside.join("victim")).unwrap(), "keep");
    // A link to a directory inside the sink directory is fine.
    fs::create_dir_all(dir.join("real")).unwrap();
    symlink(dir.join("real"), dir.join("alias")).unwrap();
    s.write(&t("alias/tok.json"), &record("v", "at-1"), Version::Absent)
        .await
        .unwrap();
    assert!(dir.join("real/tok.json").exists());
}

#[tokio::test]
async fn absolute_and_dot_dot_targets_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let s = sink(tmp.path());
    for bad in ["/etc/passwd", "../x.json", "a/../../x.json", "a//b", "./x"] {
        let e = s
            .write(&t(bad), &record("v", "at-1"), Version::Unversioned)
            .await
            .unwrap_err();
        assert_eq!(e.kind, SinkErrorKind::Permanent, "{bad}");
        assert!(s.read(&t(bad)).await.is_err(), "{bad}");
    }
}
