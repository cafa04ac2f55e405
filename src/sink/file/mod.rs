//! File sink (`kind = "file"`): one JSON record per file under the sink's `directory` (SPEC §4), mode 0600,
//! replaced atomically (temporary file in the same directory, fsync, rename, fsync of the directory).
//!
//! Confinement: a target is a relative path without empty, `.` or `..` components (the policy checks this too),
//! every directory on the way is resolved at read and write time and must stay under the canonical sink directory
//! (a symlinked directory that escapes it is refused), and the final component is never followed: a symlink there
//! is refused, and files are opened with `O_NOFOLLOW`.
//!
//! Versions are content digests: a write fails with a conflict when the file changed since it was read.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::Value;

use super::{digest, Content, Holds, Observed, Sink, SinkError, SinkErrorKind, Target, Version};
use crate::policy::diag::Diagnostics;
use crate::policy::fields::no_nul;
use crate::policy::kinds::{SinkSettings, SinkSpec, TargetKey};
use crate::policy::reader::TableReader;
use crate::record::SinkRecord;
use crate::secret::{ExposeSecret, SecretString};

/// Larger files are not ours: a record is a few hundred bytes.
const MAX_FILE: u64 = 1 << 20;

#[derive(Clone, Debug)]
pub struct FileSink {
    name: String,
    directory: PathBuf,
}

/// What the path walk found for a target.
struct Located {
    /// The canonical directory that holds (or will hold) the file.
    parent: PathBuf,
    /// The file's name in `parent`.
    file_name: String,
}

impl FileSink {
    pub fn new(name: &str, cfg: &FileSinkConfig) -> Result<Self, SinkError> {
        if !cfg.directory.is_absolute() {
            return Err(SinkError::new(
                name,
                SinkErrorKind::Permanent,
                format!(
                    "`directory` {} must be an absolute path",
                    cfg.directory.display()
                ),
            ));
        }
        Ok(FileSink {
            name: name.to_string(),
            directory: cfg.directory.clone(),
        })
    }

    fn error(&self, kind: SinkErrorKind, message: impl Into<String>) -> SinkError {
        SinkError::new(&self.name, kind, message)
    }

    fn io_error(&self, what: &str, e: &io::Error) -> SinkError {
        // Running out of descriptors, memory or space passes: retried, never a permanent failure (SPEC §5.12).
        let exhausted = matches!(
            e.raw_os_error(),
            Some(
                libc::EMFILE
                    | libc::ENFILE
                    | libc::ENOMEM
                    | libc::ENOSPC
                    | libc::EDQUOT
                    | libc::EAGAIN
                    | libc::EINTR
            )
        );
        let kind = match e.kind() {
            _ if exhausted => SinkErrorKind::Unavailable,
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                SinkErrorKind::Forbidden
            }
            io::ErrorKind::StorageFull
            | io::ErrorKind::QuotaExceeded
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::ResourceBusy => SinkErrorKind::Unavailable,
            _ => SinkErrorKind::Permanent,
        };
        self.error(kind, format!("{what}: {e}"))
    }

    /// The target's components, checked like the policy does (relative; no empty, `.` or `..` component).
    fn components<'t>(&self, target: &'t Target) -> Result<Vec<&'t str>, SinkError> {
        let path = match target {
            Target::Path(p) | Target::TokenFile(p) => p.as_str(),
            other => {
                return Err(self.error(
                    SinkErrorKind::Permanent,
                    format!("a file sink takes `path`, not {other}"),
                ))
            }
        };
        if path.starts_with('/') {
            return Err(self.error(
                SinkErrorKind::Permanent,
                format!(
                    "file target `{path}` must be relative to {}",
                    self.directory.display()
                ),
            ));
        }
        let parts: Vec<&str> = path.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\0'))
        {
            return Err(self.error(
                SinkErrorKind::Permanent,
                format!("file target `{path}` must not contain empty, `.` or `..` components"),
            ));
        }
        Ok(parts)
    }

    /// The canonical sink directory; created (0700) when `create` and missing. `None`: missing, not created.
    fn root(&self, create: bool) -> Result<Option<PathBuf>, SinkError> {
        match fs::canonicalize(&self.directory) {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.directory)
                    .map_err(|e| {
                        self.io_error(&format!("create {}", self.directory.display()), &e)
                    })?;
                fs::canonicalize(&self.directory).map(Some).map_err(|e| {
                    self.io_error(&format!("resolve {}", self.directory.display()), &e)
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_error(&format!("resolve {}", self.directory.display()), &e)),
        }
    }

    /// Walks from the sink directory to the target's parent, one component at a time, creating missing
    /// directories (0700) when `create`. Every directory reached must resolve to a place under the sink
    /// directory, so a symlink that escapes it is refused before anything is created behind it.
    /// `None`: a directory on the way is missing and `create` is false.
    fn locate(&self, target: &Target, create: bool) -> Result<Option<Located>, SinkError> {
        let parts = self.components(target)?;
        let Some(root) = self.root(create)? else {
            return Ok(None);
        };
        let (file_name, dirs) = parts.split_last().expect("split yields at least one part");
        let mut cur = root.clone();
        for dir in dirs {
            let next = cur.join(dir);
            match fs::symlink_metadata(&next) {
                Ok(m) if m.is_dir() => cur = next,
                Ok(m) if m.file_type().is_symlink() => {
                    let resolved = fs::canonicalize(&next)
                        .map_err(|e| self.io_error(&format!("resolve {}", next.display()), &e))?;
                    if !resolved.starts_with(&root) {
                        return Err(self.escapes(target, &next));
                    }
                    if !resolved.is_dir() {
                        return Err(self.error(
                            SinkErrorKind::Permanent,
                            format!("{}: {} is not a directory", target, next.display()),
                        ));
                    }
                    cur = resolved;
                }
                Ok(_) => {
                    return Err(self.error(
                        SinkErrorKind::Permanent,
                        format!("{}: {} is not a directory", target, next.display()),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    match DirBuilder::new().mode(0o700).create(&next) {
                        Ok(()) => sync_dir(&cur)
                            .map_err(|e| self.io_error(&format!("fsync {}", cur.display()), &e))?,
                        // Created concurrently: look at it again.
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => {
                            return Err(self.io_error(&format!("create {}", next.display()), &e))
                        }
                    }
                    let m = fs::symlink_metadata(&next)
                        .map_err(|e| self.io_error(&format!("stat {}", next.display()), &e))?;
                    if !m.is_dir() {
                        return Err(self.error(
                            SinkErrorKind::Permanent,
                            format!("{}: {} is not a directory", target, next.display()),
                        ));
                    }
                    cur = next;
                }
                Err(e) => return Err(self.io_error(&format!("stat {}", next.display()), &e)),
            }
        }
        // Belt and braces: the parent as the kernel resolves it now.
        let parent = fs::canonicalize(&cur)
            .map_err(|e| self.io_error(&format!("resolve {}", cur.display()), &e))?;
        if !parent.starts_with(&root) {
            return Err(self.escapes(target, &cur));
        }
        Ok(Some(Located {
            parent,
            file_name: (*file_name).to_string(),
        }))
    }

    fn escapes(&self, target: &Target, at: &Path) -> SinkError {
        self.error(
            SinkErrorKind::Permanent,
            format!(
                "{target}: {} leads outside {} through a symbolic link; refused",
                at.display(),
                self.directory.display()
            ),
        )
    }

    /// The file's bytes, or `None` when it does not exist. Refuses a symlink or anything but a regular file.
    fn read_bytes(&self, target: &Target, path: &Path) -> Result<Option<Vec<u8>>, SinkError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(self.error(
                    SinkErrorKind::Permanent,
                    format!(
                        "{target}: {} is a symbolic link; token-rotator neither follows nor replaces links",
                        path.display()
                    ),
                ))
            }
            Ok(m) if !m.is_file() => {
                return Err(self.error(
                    SinkErrorKind::Permanent,
                    format!("{target}: {} is not a regular file", path.display()),
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error(&format!("stat {}", path.display()), &e)),
        }
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path);
        let file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error(&format!("open {}", path.display()), &e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io_error(&format!("read {}", path.display()), &e))?;
        Ok(Some(bytes))
    }

    fn read_sync(&self, target: &Target) -> Result<Observed, SinkError> {
        let absent = Observed {
            version: Version::Absent,
            content: Content::Absent,
        };
        let Some(loc) = self.locate(target, false)? else {
            return Ok(absent);
        };
        let path = loc.parent.join(&loc.file_name);
        let Some(bytes) = self.read_bytes(target, &path)? else {
            return Ok(absent);
        };
        let d = digest(&bytes);
        let content = match target {
            // A token file shows only whether it holds a given value.
            Target::TokenFile(_) => Content::Delivered(Holds::Digest(d)),
            _ => content_of(&bytes),
        };
        Ok(Observed {
            version: Version::Digest(d),
            content,
        })
    }

    fn write_sync(
        &self,
        target: &Target,
        record: &SinkRecord,
        expected: Version,
    ) -> Result<(), SinkError> {
        let text = match target {
            // The bare token, nothing around it: what a consumer reading a token file expects.
            Target::TokenFile(_) => SecretString::from(record.token.expose_secret().to_string()),
            _ => {
                let mut text = serde_json::to_string_pretty(&Value::Object(record.to_json()))
                    .map_err(|e| {
                        self.error(SinkErrorKind::Permanent, format!("encode record: {e}"))
                    })?;
                text.push('\n');
                SecretString::from(text)
            }
        };
        let text = text.expose_secret();
        let loc = self
            .locate(target, true)?
            .expect("locate creates what is missing");
        let path = loc.parent.join(&loc.file_name);
        if self.read_bytes(target, &path)?.as_deref() == Some(text.as_bytes()) {
            return Ok(());
        }
        let tmp = loc.parent.join(format!(
            ".{}.tmp.{}.{:016x}",
            loc.file_name,
            std::process::id(),
            rand::random::<u64>()
        ));
        let result = self.replace(target, &tmp, &path, &loc.parent, text.as_bytes(), expected);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Writes `bytes` to `tmp` (0600, fsync), checks that `path` still holds what the last read saw
    /// (check-and-set, right before the rename so that the slow fsync is not inside the window), renames `tmp`
    /// over `path`, and fsyncs the directory.
    fn replace(
        &self,
        target: &Target,
        tmp: &Path,
        path: &Path,
        dir: &Path,
        bytes: &[u8],
        expected: Version,
    ) -> Result<(), SinkError> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(tmp)
            .map_err(|e| self.io_error(&format!("create {}", tmp.display()), &e))?;
        // The mode is 0600 whatever the umask.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| self.io_error(&format!("chmod {}", tmp.display()), &e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| self.io_error(&format!("write {}", tmp.display()), &e))?;
        drop(f);
        #[cfg(test)]
        tests::BEFORE_CHECK.with(|h| {
            if let Some(h) = &*h.borrow() {
                h(path)
            }
        });
        // The final component may have become a link since it was read: never replace one (read_bytes refuses).
        let now = self.read_bytes(target, path)?;
        let unchanged = match expected {
            Version::Absent => now.is_none(),
            Version::Digest(d) => now.as_deref().map(digest) == Some(d),
            Version::Unversioned => true,
            Version::Kv2(_) | Version::Aws(_) => {
                return Err(self.error(
                    SinkErrorKind::Permanent,
                    format!("write {target}: the expected version is not a file version"),
                ))
            }
        };
        if !unchanged {
            return Err(self.error(
                SinkErrorKind::Conflict,
                format!(
                    "write {target}: {} changed since it was read (another writer); not overwritten",
                    path.display()
                ),
            ));
        }
        if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink() || m.is_dir()) {
            return Err(self.error(
                SinkErrorKind::Permanent,
                format!(
                    "{target}: {} is a symbolic link or a directory; refused",
                    path.display()
                ),
            ));
        }
        fs::rename(tmp, path)
            .map_err(|e| self.io_error(&format!("rename to {}", path.display()), &e))?;
        sync_dir(dir).map_err(|e| self.io_error(&format!("fsync {}", dir.display()), &e))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Parses a file's bytes; the reason for garbage never quotes the content.
fn content_of(bytes: &[u8]) -> Content {
    if bytes.len() as u64 > MAX_FILE {
        return Content::Garbage("larger than 1 MiB".into());
    }
    super::content_of_bytes(bytes)
}

#[async_trait]
impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn read(&self, target: &Target) -> Result<Observed, SinkError> {
        let this = self.clone();
        let target = target.clone();
        tokio::task::spawn_blocking(move || this.read_sync(&target))
            .await
            .map_err(|e| self.error(SinkErrorKind::Permanent, format!("read task failed: {e}")))?
    }

    async fn write(
        &self,
        target: &Target,
        record: &SinkRecord,
        expected: Version,
    ) -> Result<(), SinkError> {
        let this = self.clone();
        let target = target.clone();
        let record = record.clone();
        tokio::task::spawn_blocking(move || this.write_sync(&target, &record, expected))
            .await
            .map_err(|e| self.error(SinkErrorKind::Permanent, format!("write task failed: {e}")))?
    }
}

/// The `[sinks.NAME]` table of `kind = "file"`.
#[derive(Clone, Debug)]
pub struct FileSinkConfig {
    pub directory: PathBuf,
}

impl SinkSettings for FileSinkConfig {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The policy side of `kind = "file"`.
pub struct FileSpec;

#[async_trait]
impl super::SinkKind for FileSpec {
    async fn build(
        &self,
        name: &str,
        settings: &dyn SinkSettings,
    ) -> Result<std::sync::Arc<dyn Sink>, SinkError> {
        let cfg = super::settings_of::<FileSinkConfig>(name, settings)?;
        Ok(std::sync::Arc::new(FileSink::new(name, cfg)?))
    }
}

impl SinkSpec for FileSpec {
    fn name(&self) -> &'static str {
        "file"
    }

    fn is_local(&self) -> bool {
        true
    }

    fn target_key(&self) -> TargetKey {
        TargetKey::Path
    }

    fn keys(&self) -> &'static [&'static str] {
        &["directory"]
    }

    fn read(
        &self,
        t: &mut TableReader,
        d: &mut Diagnostics,
    ) -> Option<std::sync::Arc<dyn SinkSettings>> {
        let dir = t.req_str(d, "directory")?;
        if !no_nul(d, &dir, &format!("`directory` in {}", t.name)) {
            return None;
        }
        if !Path::new(dir.get_ref()).is_absolute() {
            d.push(
                dir.span(),
                format!("`directory` in {} must be an absolute path", t.name),
            );
            return None;
        }
        Some(std::sync::Arc::new(FileSinkConfig {
            directory: PathBuf::from(dir.into_inner()),
        }))
    }

    /// `path`, and `format = "record"` (the default: the SPEC §4 record) or `"token"` (the bare token, a delivery
    /// target for consumers that read a token file, SPEC §11).
    fn read_target(
        &self,
        sink: &str,
        _token: &str,
        r: &mut TableReader,
        d: &mut Diagnostics,
    ) -> Option<Target> {
        let format = r.opt_str(d, "format");
        let target =
            crate::policy::kinds::read_keyed_target(self.name(), TargetKey::Path, sink, r, d)?;
        match (format.as_ref().map(|f| f.get_ref().as_str()), target) {
            (None | Some("record"), t) => Some(t),
            (Some("token"), Target::Path(p)) => Some(Target::TokenFile(p)),
            (Some(other), _) => {
                d.push(
                    format.as_ref().map(|f| f.span()).unwrap_or(r.span.clone()),
                    format!(
                        "`format` in {} must be \"record\" or \"token\", found \"{other}\"",
                        r.name
                    ),
                );
                None
            }
        }
    }

    /// A target must stay inside the sink's directory: relative, no `..`, no empty components, no NUL.
    fn check_target(&self, target: &Target) -> Result<(), String> {
        let (Target::Path(path) | Target::TokenFile(path)) = target else {
            return Ok(());
        };
        if path.starts_with('/') {
            return Err(format!(
                "file target `{path}` must be relative to the sink's directory"
            ));
        }
        if path.contains('\0') {
            return Err(format!(
                "file target `{}` contains a NUL character",
                path.replace('\0', "\\0")
            ));
        }
        for part in path.split('/') {
            if part.is_empty() || part == "." || part == ".." {
                return Err(format!(
                    "file target `{path}` must not contain empty, `.` or `..` components"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
