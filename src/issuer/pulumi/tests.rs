use super::*;
use reqwest::header::HeaderValue;

fn policy(kind: PulumiType, label: &str) -> TokenPolicy {
    TokenPolicy {
        name: "ci".into(),
        issuer: "pulumi".into(),
        kind: crate::policy::TokenKind::new(kind),
        schedule: std::sync::Arc::new(crate::policy::Schedule {
            lifetime: Some(Duration::from_secs(3600)),
            rotate_before: Some(Duration::from_secs(1200)),
            every: None,
            jitter: Duration::ZERO,
            grace: Duration::ZERO,
            window: None,
            min_validity: None,
            manual: false,
            revoke_after_use: false,
        }),
        label: label.into(),
        sinks: Vec::new(),
        notify: Default::default(),
    }
}

fn issuer() -> PulumiIssuer {
    let cfg = IssuerConfig {
        name: "pulumi".into(),
        kind: "pulumi",
        address: "http://127.0.0.1:1".into(),
        token: crate::policy::SecretRef::Env("X".into()),
        ca_file: None,
        requests_per_second: 25,
    };
    PulumiIssuer::new(
        &cfg,
        SecretString::from("pul-0123456789abcdef0123456789abcdef01234567".to_string()),
        crate::issuer::api::IssuerDeps::unreachable(),
    )
    .unwrap()
}

#[test]
fn labels_fit_forty_characters_are_unique_per_second_and_recognised() {
    let i = issuer();
    let team = PulumiType::Team {
        organization: "acme".into(),
        team: "platform".into(),
    };
    let long = policy(team.clone(), "abcdefghijklmnopqrstuvwxy-and-more");
    let at: DateTime<Utc> = "2026-11-23T19:45:01.600Z".parse().unwrap();
    let a = i.label(&long, at);
    assert_eq!(a, "abcdefghijklmnopqrstuvwxy-20261123194501");
    assert_eq!(a.chars().count(), 40);
    // Same second again (a forced rotation): the next second, never the same name.
    let b = i.label(&long, at);
    assert_eq!(b, "abcdefghijklmnopqrstuvwxy-20261123194502");
    assert!(i.is_own_label(&long, &a) && i.is_own_label(&long, &b));

    let p = policy(team, "ci");
    assert!(i.is_own_label(&p, "ci-20261123194501"));
    assert!(!i.is_own_label(&p, "ci-team-20261123194501"));
    assert!(!i.is_own_label(&p, "ci-2026112319450"));
    assert!(!i.is_own_label(&p, "ci-202611231945011"));
    assert!(!i.is_own_label(&p, "ci-20261123194501x"));
    assert!(!i.is_own_label(&p, "made by hand"));
    assert!(!i.is_own_label(&p, "managed by token-rotator (ci)"));
}

#[test]
fn error_texts_are_read_from_both_shapes() {
    assert_eq!(
        error_text(br#"{"code":409,"message":"Conflict: token name already exists"}"#),
        "Conflict: token name already exists"
    );
    assert_eq!(error_text(b"404 page not found\n"), "404 page not found\n");
    assert_eq!(
        error_text(
            br#"{"code":400,"message":"Invalid","errors":[{"resource":"token","attribute":"name","errorType":"invalid"}]}"#
        ),
        "Invalid; name invalid"
    );
}

#[test]
fn retry_after_reads_seconds_and_dates() {
    let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    let mut h = HeaderMap::new();
    assert_eq!(retry_after(&h, now), None);
    h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
    assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3)));
    h.insert(
        RETRY_AFTER,
        HeaderValue::from_static("Thu, 01 Jan 2026 00:00:05 GMT"),
    );
    assert_eq!(retry_after(&h, now), Some(Duration::from_secs(5)));
    h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
    assert_eq!(retry_after(&h, now), None);
}

#[test]
fn list_items_parse_with_either_created_form() {
    let item = json!({"id":"abc","name":"ci-20260101000000","description":"d","created":"2026-01-01 00:00:01.250",
        "lastUsed":0,"expires":1798761600,"admin":false,"createdBy":"alice","type":"team"});
    let l = listed(
        &item,
        Some(&PulumiType::Team {
            organization: "o".into(),
            team: "t".into(),
        }),
    )
    .unwrap();
    assert_eq!(l.label, "ci-20260101000000");
    assert_eq!(l.created, Some("2026-01-01T00:00:01.250Z".parse().unwrap()));
    assert_eq!(l.expires, DateTime::from_timestamp(1798761600, 0));
    assert_eq!(l.last_used, None);
    let personal = listed(&item, Some(&PulumiType::Personal)).unwrap();
    assert_eq!(personal.label, "d");
    assert_eq!(
        parse_created("2026-01-01T00:00:01.250Z"),
        Some("2026-01-01T00:00:01.250Z".parse().unwrap())
    );
}
