//! AWS Secrets Manager sink (`kind = "aws-secretsmanager"`): the record is the `SecretString` of the version
//! labelled `AWSCURRENT`.
//!
//! A write follows the rotation protocol of AWS's own rotation functions (shared/reference/secret-stores.md B.3):
//! the new value is staged with `PutSecretValue(VersionStages = ["AWSPENDING"])`, then
//! `UpdateSecretVersionStage` moves `AWSCURRENT` to it (AWS moves `AWSPREVIOUS` to the version it came from), then
//! `AWSPENDING` is taken off again. The `ClientRequestToken` (which becomes the `VersionId`) is derived from the
//! record, so a write retried after a crash or a lost response is idempotent: AWS ignores a repeated token with the
//! same value. A missing secret is created with the value (`CreateSecret`, tagged `managed-by = token-rotator`).
//!
//! Check-and-set: the version read before the mint is the `VersionId` holding `AWSCURRENT`; a write that finds
//! another one there fails with a conflict before anything is sent.
//!
//! Errors are told apart by their code (`ProvideErrorMetadata::code`), never the HTTP status: moto answers 404 where
//! AWS answers 400 (secret-stores.md B.1). Reads name the stage explicitly: moto answers a plain `GetSecretValue`
//! with a stale version after a stage move (secret-stores.md B.9, gap 1).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::config::{BehaviorVersion, Region};
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::types::Tag;
use aws_sdk_secretsmanager::Client;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{AwsVersionId, Content, Observed, Sink, SinkError, SinkErrorKind, Target, Version};
use crate::policy::diag::Diagnostics;
use crate::policy::fields::{check_address, non_empty};
use crate::policy::kinds::{SinkSettings, SinkSpec, TargetKey};
use crate::policy::reader::TableReader;
use crate::record::SinkRecord;

const AWSCURRENT: &str = "AWSCURRENT";
const AWSPENDING: &str = "AWSPENDING";
/// AWS's limit on `SecretString` (bytes).
pub const MAX_SECRET_STRING: usize = 65_536;
/// The tag put on secrets this daemon creates.
pub const MANAGED_BY: (&str, &str) = ("managed-by", "token-rotator");

/// What each operation needs in IAM, for AccessDenied messages.
const READ_ACTIONS: &str =
    "secretsmanager:GetSecretValue (and kms:Decrypt on a customer managed key)";
const WRITE_ACTIONS: &str = "secretsmanager:DescribeSecret, secretsmanager:GetSecretValue, secretsmanager:PutSecretValue, secretsmanager:UpdateSecretVersionStage (and kms:GenerateDataKey, kms:Decrypt on a customer managed key)";
const CREATE_ACTIONS: &str = "secretsmanager:CreateSecret and secretsmanager:TagResource (and kms:GenerateDataKey on `kms_key_id`)";

pub struct AwsSink {
    name: String,
    client: Client,
    kms_key_id: Option<String>,
    region: String,
}

// The SDK config holds credentials: keep it away from Debug.
impl std::fmt::Debug for AwsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSink")
            .field("name", &self.name)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// The `ClientRequestToken` (and so the `VersionId`) for a record: a UUID-formatted SHA-256 of what identifies
/// the minted token (issuer, type, token id, creation time), never of its value. The same minted token always
/// gets the same one, so a retried write is a no-op at AWS.
pub fn client_request_token(record: &SinkRecord) -> String {
    let mut h = Sha256::new();
    for part in [
        "token-rotator/aws-version/1",
        record.issuer.as_str(),
        record.token_type.as_str(),
        record.token_id.as_str(),
        &crate::record::rfc3339(record.created_at),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    // RFC 9562 UUIDv8 (custom): version nibble 8, variant 10.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Every call is bounded: connect, read, each attempt, and the whole operation with the SDK's retries.
fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(15))
        .operation_attempt_timeout(Duration::from_secs(20))
        .operation_timeout(Duration::from_secs(60))
        .build()
}

/// What `DescribeSecret` says about a secret, as far as a write cares.
struct Described {
    /// The version labelled `AWSCURRENT`, if any.
    current: Option<String>,
    rotation_enabled: bool,
    deleted: bool,
}

impl AwsSink {
    /// Loads the standard AWS configuration chain (env, profile, web identity, ECS, IMDS) with the sink's
    /// `region` and `endpoint_url`. Credentials are resolved lazily, at the first call.
    pub async fn new(name: &str, cfg: &AwsSinkConfig) -> Result<Self, SinkError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts());
        if let Some(r) = &cfg.region {
            loader = loader.region(Region::new(r.clone()));
        }
        let sdk = loader.load().await;
        Self::from_sdk_config(name, cfg, &sdk)
    }

    /// The sink over an already loaded AWS configuration (tests pass static credentials this way).
    pub fn from_sdk_config(
        name: &str,
        cfg: &AwsSinkConfig,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self, SinkError> {
        let region = cfg
            .region
            .clone()
            .or_else(|| sdk.region().map(|r| r.to_string()));
        let Some(region) = region else {
            return Err(SinkError::new(
                name,
                SinkErrorKind::Permanent,
                "no AWS region: set `region` in the sink, or AWS_REGION / a profile region",
            ));
        };
        // Region, timeouts and endpoint apply to Secrets Manager only, not to STS or SSO used by the
        // credential chain.
        let mut conf = aws_sdk_secretsmanager::config::Builder::from(sdk)
            .region(Region::new(region.clone()))
            .timeout_config(timeouts());
        if let Some(e) = &cfg.endpoint_url {
            conf = conf.endpoint_url(e);
        }
        Ok(AwsSink {
            name: name.to_string(),
            client: Client::from_conf(conf.build()),
            kms_key_id: cfg.kms_key_id.clone(),
            region,
        })
    }

    fn error(&self, kind: SinkErrorKind, message: impl Into<String>) -> SinkError {
        SinkError::new(&self.name, kind, message)
    }

    fn secret_id<'t>(&self, target: &'t Target) -> Result<&'t str, SinkError> {
        match target {
            Target::SecretId(s) => Ok(s),
            other => Err(self.error(
                SinkErrorKind::Permanent,
                format!("an AWS Secrets Manager sink takes `secret_id`, not {other}"),
            )),
        }
    }

    /// Turns an SDK error into ours by its error code, with the secret id and AWS's message.
    fn map_err<E>(
        &self,
        op: &str,
        id: &str,
        actions: &str,
        e: &SdkError<E, HttpResponse>,
    ) -> SinkError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match e {
            SdkError::ServiceError(_) => {
                let code = crate::redact::outside_text(e.code().unwrap_or("unknown"), &[]);
                let code = code.as_str();
                // AWS's own words: untrusted text, masked like every other server's (SPEC §5.13).
                let msg = crate::redact::outside_text(e.message().unwrap_or(""), &[]);
                let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
                let (kind, hint) = classify(code, status);
                let hint = match kind {
                    SinkErrorKind::Forbidden if hint.is_empty() => {
                        format!(" (the daemon's AWS identity needs {actions} on this secret)")
                    }
                    _ => hint.to_string(),
                };
                self.error(
                    kind,
                    format!(
                        "{op} {id} (region {}): AWS answered {code}: {msg}{hint}",
                        self.region
                    ),
                )
            }
            SdkError::TimeoutError(_) => self.error(
                SinkErrorKind::Unavailable,
                format!("{op} {id} (region {}): timed out", self.region),
            ),
            SdkError::ConstructionFailure(_) => self.error(
                SinkErrorKind::Permanent,
                format!(
                    "{op} {id}: {}",
                    crate::redact::outside_text(&DisplayErrorContext(e).to_string(), &[])
                ),
            ),
            // Connection failures, and credential-chain failures (they surface as dispatch failures).
            _ => self.error(
                SinkErrorKind::Unavailable,
                format!(
                    "{op} {id} (region {}): cannot reach AWS Secrets Manager: {}",
                    self.region,
                    crate::redact::outside_text(&DisplayErrorContext(e).to_string(), &[])
                ),
            ),
        }
    }

    async fn describe(&self, id: &str) -> Result<Option<Described>, SinkError> {
        match self.client.describe_secret().secret_id(id).send().await {
            Ok(out) => Ok(Some(Described {
                current: out.version_ids_to_stages().and_then(|m| {
                    m.iter()
                        .find(|(_, stages)| stages.iter().any(|s| s == AWSCURRENT))
                        .map(|(v, _)| v.clone())
                }),
                rotation_enabled: out.rotation_enabled().unwrap_or(false),
                deleted: out.deleted_date().is_some(),
            })),
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(self.map_err("describe", id, "secretsmanager:DescribeSecret", &e)),
        }
    }

    fn version_of(&self, id: &str, version_id: &str) -> Result<AwsVersionId, SinkError> {
        AwsVersionId::new(version_id).ok_or_else(|| {
            self.error(
                SinkErrorKind::Permanent,
                format!("{id}: AWS returned a VersionId longer than 64 characters"),
            )
        })
    }

    async fn create(&self, id: &str, value: &str, token: &str) -> Result<(), SinkError> {
        let mut req = self
            .client
            .create_secret()
            .name(id)
            .client_request_token(token)
            .secret_string(value)
            .description("Managed by token-rotator: a token it rotates (SPEC §4 record).")
            .tags(Tag::builder().key(MANAGED_BY.0).value(MANAGED_BY.1).build());
        if let Some(k) = &self.kms_key_id {
            req = req.kms_key_id(k);
        }
        match req.send().await {
            Ok(_) => {
                tracing::info!(sink = %self.name, secret_id = %id, version_id = %token, "created the secret");
                Ok(())
            }
            Err(e) if e.code() == Some("ResourceExistsException") => Err(self.error(
                SinkErrorKind::Conflict,
                format!("create {id}: the secret was created by another writer since it was read; not overwritten"),
            )),
            Err(e) => Err(self.map_err("create", id, CREATE_ACTIONS, &e)),
        }
    }
}

/// Error code → kind (and a hint). AWS's codes: secret-stores.md B.6; throttling codes as the SDK classifies them.
fn classify(code: &str, status: u16) -> (SinkErrorKind, &'static str) {
    match code {
        "ResourceExistsException" => (
            SinkErrorKind::Conflict,
            " (a version with this ClientRequestToken holds another value, or the secret already exists)",
        ),
        "ThrottlingException" | "Throttling" | "ThrottledException" | "TooManyRequestsException"
        | "RequestLimitExceeded" | "RequestThrottled" | "RequestThrottledException"
        | "SlowDown" | "PriorRequestNotComplete" => (SinkErrorKind::Unavailable, " (throttled)"),
        "LimitExceededException" => (
            SinkErrorKind::Unavailable,
            " (a Secrets Manager quota, usually versions kept within 24 hours; retried later)",
        ),
        "InternalServiceError" | "InternalFailure" | "ServiceUnavailable"
        | "ServiceUnavailableException" | "RequestTimeout" | "RequestTimeoutException" => {
            (SinkErrorKind::Unavailable, "")
        }
        "AccessDeniedException" | "AccessDenied" => (SinkErrorKind::Forbidden, ""),
        "UnrecognizedClientException" | "InvalidClientTokenId" | "InvalidSignatureException"
        | "SignatureDoesNotMatch" | "ExpiredTokenException" | "ExpiredToken"
        | "IncompleteSignature" | "MissingAuthenticationToken" => (
            SinkErrorKind::Forbidden,
            " (the AWS credentials were rejected: check the credential chain)",
        ),
        "EncryptionFailure" | "DecryptionFailure" => (
            SinkErrorKind::Forbidden,
            " (the KMS key cannot be used: it is disabled, or kms:GenerateDataKey / kms:Decrypt is not granted)",
        ),
        "InvalidRequestException" => (
            SinkErrorKind::Permanent,
            " (the secret is in a state that does not allow this, e.g. scheduled for deletion: restore it)",
        ),
        "ResourceNotFoundException" => (SinkErrorKind::Permanent, " (no such secret)"),
        _ if status >= 500 => (SinkErrorKind::Unavailable, ""),
        _ => (SinkErrorKind::Permanent, ""),
    }
}

/// Parses a `SecretString`; the reason for garbage never quotes the content.
fn content_of(text: &str) -> Content {
    super::content_of_bytes(text.as_bytes())
}

#[async_trait]
impl Sink for AwsSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn read(&self, target: &Target) -> Result<Observed, SinkError> {
        let id = self.secret_id(target)?;
        let out = match self
            .client
            .get_secret_value()
            .secret_id(id)
            .version_stage(AWSCURRENT)
            .send()
            .await
        {
            Ok(out) => out,
            // No such secret, or a secret without a current value: nothing to expect but absence.
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                return Ok(Observed {
                    version: Version::Absent,
                    content: Content::Absent,
                })
            }
            Err(e) => return Err(self.map_err("read", id, READ_ACTIONS, &e)),
        };
        let Some(version_id) = out.version_id() else {
            return Err(self.error(
                SinkErrorKind::Unavailable,
                format!("read {id}: AWS returned a value without a VersionId"),
            ));
        };
        let version = Version::Aws(self.version_of(id, version_id)?);
        let content = match (out.secret_string(), out.secret_binary()) {
            (Some(s), _) => content_of(s),
            (None, Some(_)) => Content::Garbage("a SecretBinary, not a SecretString".into()),
            (None, None) => Content::Garbage("no value".into()),
        };
        Ok(Observed { version, content })
    }

    async fn write(
        &self,
        target: &Target,
        record: &SinkRecord,
        expected: Version,
    ) -> Result<(), SinkError> {
        let id = self.secret_id(target)?;
        let value = serde_json::to_string(&Value::Object(record.to_json()))
            .map_err(|e| self.error(SinkErrorKind::Permanent, format!("encode record: {e}")))?;
        if value.len() > MAX_SECRET_STRING {
            return Err(self.error(
                SinkErrorKind::Permanent,
                format!(
                    "write {id}: the record is {} bytes, over the {MAX_SECRET_STRING}-byte SecretString limit; not sent",
                    value.len()
                ),
            ));
        }
        let token = client_request_token(record);
        let expected_id = match expected {
            Version::Absent => None,
            Version::Aws(v) => Some(v),
            Version::Kv2(_) | Version::Unversioned | Version::Digest(_) => {
                return Err(self.error(
                    SinkErrorKind::Permanent,
                    format!("write {id}: the expected version is not an AWS version"),
                ))
            }
        };
        let Some(described) = self.describe(id).await? else {
            if let Some(v) = expected_id {
                return Err(self.error(
                    SinkErrorKind::Conflict,
                    format!("write {id}: the secret (at version {v} when read) is gone; not recreated in this attempt"),
                ));
            }
            return self.create(id, &value, &token).await;
        };
        if described.deleted {
            return Err(self.error(
                SinkErrorKind::Permanent,
                format!("write {id}: the secret is scheduled for deletion; restore it (RestoreSecret) or use another secret_id"),
            ));
        }
        if described.rotation_enabled {
            return Err(self.error(
                SinkErrorKind::Permanent,
                format!("write {id}: the secret has AWS rotation enabled (a rotation Lambda owns it); disable it or use another secret_id"),
            ));
        }
        let current = described.current;
        // Our version is already current: an earlier try (or a crashed run) got here. Nothing to do.
        if current.as_deref() == Some(token.as_str()) {
            return Ok(());
        }
        if current.as_deref() != expected_id.as_ref().map(AwsVersionId::as_str) {
            return Err(self.error(
                SinkErrorKind::Conflict,
                format!(
                    "write {id}: AWSCURRENT is version {}, not {} as read (another writer changed the secret); not overwritten",
                    current.as_deref().unwrap_or("(none)"),
                    expected_id.as_ref().map(AwsVersionId::as_str).unwrap_or("(none)")
                ),
            ));
        }
        let put = self
            .client
            .put_secret_value()
            .secret_id(id)
            .client_request_token(&token)
            .secret_string(&value)
            .version_stages(AWSPENDING)
            .send()
            .await
            .map_err(|e| self.map_err("stage AWSPENDING of", id, WRITE_ACTIONS, &e))?;
        // The first version of a secret without one is AWSCURRENT already.
        if !put.version_stages().iter().any(|s| s == AWSCURRENT) {
            let moved = self
                .client
                .update_secret_version_stage()
                .secret_id(id)
                .version_stage(AWSCURRENT)
                .move_to_version_id(&token)
                .set_remove_from_version_id(current.clone())
                .send()
                .await;
            if let Err(e) = moved {
                // AWS refuses the move when AWSCURRENT is no longer on `current`: someone else moved it.
                let err = self.map_err("move AWSCURRENT of", id, WRITE_ACTIONS, &e);
                if let Ok(Some(now)) = self.describe(id).await {
                    if now.current != current && now.current.as_deref() != Some(token.as_str()) {
                        return Err(self.error(
                            SinkErrorKind::Conflict,
                            format!("write {id}: AWSCURRENT moved to version {} while writing (another writer); the new value stays staged as AWSPENDING", now.current.as_deref().unwrap_or("(none)")),
                        ));
                    }
                }
                return Err(err);
            }
        }
        // Finish like AWS's rotation template: AWSPENDING off again, so a later RotateSecret does not see a
        // rotation in progress. Failing here leaves a correct AWSCURRENT; it is only logged.
        if let Err(e) = self
            .client
            .update_secret_version_stage()
            .secret_id(id)
            .version_stage(AWSPENDING)
            .remove_from_version_id(&token)
            .send()
            .await
        {
            let e = self.map_err("remove AWSPENDING of", id, WRITE_ACTIONS, &e);
            tracing::warn!(sink = %self.name, secret_id = %id, error = %e, "the new version is AWSCURRENT but AWSPENDING could not be removed");
        }
        tracing::debug!(sink = %self.name, secret_id = %id, version_id = %token, previous = current.as_deref().unwrap_or("(none)"), "AWSCURRENT moved to the new version");
        Ok(())
    }
}

/// The `[sinks.NAME]` table of `kind = "aws-secretsmanager"`.
#[derive(Clone, Debug)]
pub struct AwsSinkConfig {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub kms_key_id: Option<String>,
}

impl SinkSettings for AwsSinkConfig {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The policy side of `kind = "aws-secretsmanager"`.
pub struct AwsSpec;

#[async_trait]
impl super::SinkKind for AwsSpec {
    async fn build(
        &self,
        name: &str,
        settings: &dyn SinkSettings,
    ) -> Result<Arc<dyn Sink>, SinkError> {
        let cfg = super::settings_of::<AwsSinkConfig>(name, settings)?;
        Ok(Arc::new(AwsSink::new(name, cfg).await?))
    }
}

impl SinkSpec for AwsSpec {
    fn name(&self) -> &'static str {
        "aws-secretsmanager"
    }

    fn target_key(&self) -> TargetKey {
        TargetKey::SecretId
    }

    fn keys(&self) -> &'static [&'static str] {
        &["region", "endpoint_url", "kms_key_id"]
    }

    fn read(&self, t: &mut TableReader, d: &mut Diagnostics) -> Option<Arc<dyn SinkSettings>> {
        let region = t
            .opt_str(d, "region")
            .and_then(|r| non_empty(d, r, "region"));
        let mut ok = true;
        let endpoint_url = t.opt_str(d, "endpoint_url").and_then(|e| {
            if check_address(d, "endpoint_url", &t.name, &e) {
                Some(e.into_inner())
            } else {
                ok = false;
                None
            }
        });
        let kms_key_id = t
            .opt_str(d, "kms_key_id")
            .and_then(|k| non_empty(d, k, "kms_key_id"));
        ok.then(|| {
            Arc::new(AwsSinkConfig {
                region,
                endpoint_url,
                kms_key_id,
            }) as Arc<dyn SinkSettings>
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretString;

    fn record(id: &str, value: &str) -> SinkRecord {
        SinkRecord {
            token: SecretString::from(value.to_string()),
            token_id: id.into(),
            issuer: "tfc".into(),
            token_type: "organization".into(),
            created_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            expires_at: None,
        }
    }

    #[test]
    fn client_request_token_is_a_deterministic_uuid_that_ignores_the_value() {
        let a = client_request_token(&record("at-1", "v1"));
        assert_eq!(a.len(), 36);
        assert!((32..=64).contains(&a.len()));
        assert_eq!(a.as_bytes()[14], b'8', "UUIDv8: {a}");
        assert_eq!(a, client_request_token(&record("at-1", "other value")));
        assert_ne!(a, client_request_token(&record("at-2", "v1")));
        assert!(AwsVersionId::new(&a).is_some());
    }

    #[test]
    fn errors_are_classified_by_code_not_status() {
        assert_eq!(
            classify("ResourceExistsException", 400).0,
            SinkErrorKind::Conflict
        );
        assert_eq!(
            classify("ThrottlingException", 400).0,
            SinkErrorKind::Unavailable
        );
        assert_eq!(
            classify("LimitExceededException", 400).0,
            SinkErrorKind::Unavailable
        );
        assert_eq!(
            classify("AccessDeniedException", 400).0,
            SinkErrorKind::Forbidden
        );
        assert_eq!(
            classify("InvalidRequestException", 400).0,
            SinkErrorKind::Permanent
        );
        // moto answers 404 for a missing secret, AWS 400: the code decides.
        assert_eq!(
            classify("ResourceNotFoundException", 404).0,
            SinkErrorKind::Permanent
        );
        assert_eq!(classify("SomethingNew", 503).0, SinkErrorKind::Unavailable);
        assert_eq!(classify("SomethingNew", 400).0, SinkErrorKind::Permanent);
    }

    #[test]
    fn garbage_never_quotes_the_value() {
        for text in [
            "leaky-value",
            "[\"leaky-value\"]",
            "{\"token\":\"leaky-value\"}",
        ] {
            match content_of(text) {
                Content::Garbage(why) => assert!(!why.contains("leaky"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
