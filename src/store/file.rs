//! The file token store, the default: one private directory, a few small JSON files per slot.
//!
//! Layout, shared with the Python proxy this gateway replaces (so its sign-ins keep working):
//!
//! - `<hash>_tokens.json`: the slot's [`StoredTokens`];
//! - `<hash>_client_info.json`: the slot's [`StoredClient`] registration;
//! - `<hash>.lock`: an empty file whose advisory lock (`flock`) is the slot's [`SlotLock`];
//!
//! where `<hash>` is [`Slot::hash`]. Guarantees:
//!
//! - The directory is 0700 and every file 0600, whatever the umask. A directory that other
//!   users can write to is refused, since they could swap a slot's files; a file found readable
//!   by others is tightened to 0600 when read.
//! - A write goes to a temporary file `.<name>.tmp-<pid>-<n>` in the same directory, is synced,
//!   renamed over the record and the directory synced, so a reader, or a restart after a crash,
//!   sees the old record or the new one and never a partial one.
//! - A record that does not parse is renamed to `<name>.corrupt` (or `.corrupt.<n>`) and
//!   reported once as [`StoreError::Corrupt`]; the slot then reads as empty and needs a new
//!   sign-in, while the bad file stays for a person to inspect.
//! - A slot lock excludes other tasks of this process and other processes on this directory.
//! - With `[store] encryption_keys`, each record is sealed by the [`Keyring`] (see
//!   [`super::sealed`]). A sealed record that does not open (its key is not configured, or it
//!   was altered) is reported and left where it is: it is not corrupt, the configuration is
//!   what needs fixing, and keeping it aside would lose a good sign-in. Saving tokens also
//!   moves the client registration to the current key (it is otherwise rarely written).
//! - Sign-ins in progress are not kept here: a directory is one machine's, so the process that
//!   started a sign-in keeps it in memory and finishes it ([`TokenStore::is_shared`] is
//!   false).
//!
//! The OAuth flow and the refresher reach it through [`TokenStore`]; every file operation runs
//! on tokio's blocking pool.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::sealed::{Keyring, RecordKind};
use super::{Slot, SlotLock, StoreError, StoredClient, StoredFlow, StoredTokens, TokenStore};

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Tells apart the temporary files of concurrent writes within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Slots kept as files in one directory.
pub(crate) struct FileStore {
    dir: PathBuf,
    keyring: Arc<Keyring>,
    /// One async mutex per slot, so tasks of this process queue here instead of each holding a
    /// blocking thread while it waits for the file lock.
    local_locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("dir", &self.dir)
            .field("sealed", &!self.keyring.is_empty())
            .finish()
    }
}

impl FileStore {
    /// Opens the store in `dir`, creating it (and its parents) with mode 0700 when missing.
    ///
    /// An existing directory of ours that others can read is tightened to 0700; one that others
    /// can write to is refused with [`StoreError::InsecureDirectory`]. Records are sealed with
    /// `keyring`'s first key, if it has one.
    pub(crate) fn new(dir: PathBuf, keyring: Keyring) -> Result<Self, StoreError> {
        prepare_dir(&dir)?;
        Ok(Self {
            dir,
            keyring: Arc::new(keyring),
            local_locks: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn tokens_path(&self, slot: &Slot) -> PathBuf {
        self.dir.join(format!("{}_tokens.json", slot.hash()))
    }

    fn client_path(&self, slot: &Slot) -> PathBuf {
        self.dir.join(format!("{}_client_info.json", slot.hash()))
    }

    fn path(&self, slot: &Slot, kind: RecordKind) -> PathBuf {
        match kind {
            RecordKind::Tokens => self.tokens_path(slot),
            RecordKind::Client => self.client_path(slot),
        }
    }

    /// Moves the slot's client registration to the current key when it is under another:
    /// it is rewritten only when a client registers, so without this an old key could never
    /// be retired. Best effort: on failure the file stays readable under its old key.
    async fn reseal_client(&self, slot: &Slot) {
        if self.keyring.is_empty() {
            return;
        }
        let path = self.client_path(slot);
        let sealing = Sealing {
            keyring: Arc::clone(&self.keyring),
            slot_hash: slot.hash(),
            kind: RecordKind::Client,
        };
        let dir = self.dir.clone();
        let resealed = blocking(&self.dir, move || reseal_file(&dir, &path, &sealing)).await;
        if let Err(error) = resealed {
            tracing::warn!(route = %slot.route, %error,
                "client registration not moved to the current store key; its old key still opens it");
        }
    }

    fn local_lock(&self, hash: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.local_locks.lock();

        // Forget slots nobody holds or waits for, so per-user slots do not pile up.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(hash.to_owned()).or_default().clone()
    }

    async fn load<T: DeserializeOwned + Send + 'static>(
        &self,
        slot: &Slot,
        kind: RecordKind,
    ) -> Result<Option<T>, StoreError> {
        let path = self.path(slot, kind);
        let sealing = Sealing {
            keyring: Arc::clone(&self.keyring),
            slot_hash: slot.hash(),
            kind,
        };
        blocking(&self.dir, move || read_record(&path, &sealing)).await
    }

    async fn save<T: Serialize>(
        &self,
        slot: &Slot,
        kind: RecordKind,
        record: &T,
    ) -> Result<(), StoreError> {
        let path = self.path(slot, kind);
        let bytes = self
            .keyring
            .seal(&slot.hash(), kind, record)
            .map_err(|source| StoreError::Serialize {
                record: path.display().to_string(),
                source,
            })?;
        let dir = self.dir.clone();
        blocking(&self.dir, move || write_record(&dir, &path, &bytes)).await
    }
}

#[async_trait]
impl TokenStore for FileStore {
    async fn load_tokens(&self, slot: &Slot) -> Result<Option<StoredTokens>, StoreError> {
        self.load(slot, RecordKind::Tokens).await
    }

    async fn save_tokens(&self, slot: &Slot, tokens: &StoredTokens) -> Result<(), StoreError> {
        self.save(slot, RecordKind::Tokens, tokens).await?;
        self.reseal_client(slot).await;
        Ok(())
    }

    async fn load_client(&self, slot: &Slot) -> Result<Option<StoredClient>, StoreError> {
        self.load(slot, RecordKind::Client).await
    }

    async fn save_client(&self, slot: &Slot, client: &StoredClient) -> Result<(), StoreError> {
        self.save(slot, RecordKind::Client, client).await
    }

    async fn clear(&self, slot: &Slot, with_client: bool) -> Result<(), StoreError> {
        let mut paths = vec![self.tokens_path(slot)];
        if with_client {
            paths.push(self.client_path(slot));
        }
        let dir = self.dir.clone();
        blocking(&self.dir, move || {
            for path in &paths {
                remove_if_present(path)?;
            }
            sync_dir(&dir)
        })
        .await
    }

    async fn lock(&self, slot: &Slot) -> Result<SlotLock, StoreError> {
        let hash = slot.hash();
        let local = self.local_lock(&hash).lock_owned().await;
        let path = self.dir.join(format!("{hash}.lock"));
        let file = blocking(&self.dir, move || lock_file(&path)).await?;
        Ok(SlotLock::new(HeldLock {
            file,
            _local: local,
        }))
    }

    /// No, as far as sign-ins go: a directory is one machine's, and a sign-in is finished
    /// by the process that started it.
    fn is_shared(&self) -> bool {
        false
    }

    /// Keeps nothing: the process that started the sign-in holds it in memory.
    async fn save_flow(
        &self,
        _state_digest: &str,
        _flow: &StoredFlow,
        _expires_at: SystemTime,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// Never has one, since it keeps none.
    async fn take_flow(&self, _state_digest: &str) -> Result<Option<StoredFlow>, StoreError> {
        Ok(None)
    }
}

/// A slot lock held by this store: the locked file, then the in-process mutex.
struct HeldLock {
    file: File,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // Closing the file would release the lock too; unlocking first makes the order plain:
        // the file lock is free before the next task of this process is let in.
        let _ = self.file.unlock();
    }
}

/// Runs file work on the blocking pool.
async fn blocking<T, F>(dir: &Path, job: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(job).await {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(StoreError::Io {
            path: dir.to_path_buf(),
            source: io::Error::new(ErrorKind::Interrupted, error),
        }),
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_error(dir))?;
    let mode = fs::metadata(dir).map_err(io_error(dir))?.mode() & 0o777;

    // Whoever can write the directory can replace a slot's files: refuse rather than repair,
    // since the files may already have been tampered with.
    if mode & 0o022 != 0 {
        return Err(StoreError::InsecureDirectory {
            path: dir.to_path_buf(),
            mode,
        });
    }
    if mode == DIR_MODE {
        return Ok(());
    }

    // Only the owner may chmod, so a refusal means the directory is someone else's.
    match fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)) {
        Ok(()) => {
            tracing::warn!(path = %dir.display(), mode = format!("{mode:03o}"),
                "token store directory was open to other users; set it to 0700");
            Ok(())
        }
        Err(error) if error.kind() == ErrorKind::PermissionDenied => {
            tracing::warn!(path = %dir.display(), mode = format!("{mode:03o}"),
                "token store directory belongs to another user; left its mode as it is");
            Ok(())
        }
        Err(error) => Err(io_error(dir)(error)),
    }
}

/// Sets a file we opened to 0600 if it is anything else, saying so when others could read it.
fn tighten(path: &Path, file: &File) -> Result<(), StoreError> {
    let mode = file.metadata().map_err(io_error(path))?.mode() & 0o777;
    if mode == FILE_MODE {
        return Ok(());
    }
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:03o}"),
            "token store file was open to other users; set it to 0600");
    }
    file.set_permissions(Permissions::from_mode(FILE_MODE))
        .map_err(io_error(path))
}

/// Which file was read: a writer may rename a new record into place at any moment.
type FileIdentity = (u64, u64);

/// What opening a record needs: the keys, and what the seal is bound to.
struct Sealing {
    keyring: Arc<Keyring>,
    slot_hash: String,
    kind: RecordKind,
}

fn read_record<T: DeserializeOwned>(
    path: &Path,
    sealing: &Sealing,
) -> Result<Option<T>, StoreError> {
    // Each retry follows a record that changed under us, which only a writer or another
    // reader's quarantine does; three rounds is far more than that ever takes.
    for _ in 0..3 {
        let Some((bytes, identity)) = read_private(path)? else {
            return Ok(None);
        };
        let plain = sealing
            .keyring
            .open(&sealing.slot_hash, sealing.kind, &bytes)
            .map_err(|source| StoreError::sealed(path.display().to_string(), source))?;
        let error = match serde_json::from_slice(&plain) {
            Ok(record) => return Ok(Some(record)),
            Err(error) => error,
        };
        if let Some(kept_as) = quarantine(path, identity)? {
            tracing::warn!(path = %path.display(), kept_as = %kept_as.display(),
                "token store file unreadable; kept it aside, the slot needs a new sign-in");
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                kept_as,
                reason: super::describe(&error),
            });
        }
    }
    Err(io_error(path)(io::Error::other(
        "the file kept changing while it was read",
    )))
}

fn read_private(path: &Path) -> Result<Option<(Vec<u8>, FileIdentity)>, StoreError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error(path)(error)),
    };
    tighten(path, &file)?;
    let meta = file.metadata().map_err(io_error(path))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_error(path))?;
    Ok(Some((bytes, (meta.dev(), meta.ino()))))
}

/// Moves an unparsable record aside without overwriting an earlier one.
///
/// Answers `None` when the file at `path` is no longer the one that was read (a writer
/// replaced it, or another reader already moved it), so the caller reads again.
fn quarantine(path: &Path, read: FileIdentity) -> Result<Option<PathBuf>, StoreError> {
    for n in 0..1000 {
        let kept_as = corrupt_name(path, n);

        // A hard link never replaces an existing name, unlike a rename.
        match fs::hard_link(path, &kept_as) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::AlreadyExists => continue,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error(&kept_as)(error)),
        }
        if identity(&kept_as)? != Some(read) {
            remove_if_present(&kept_as)?;
            return Ok(None);
        }
        if identity(path)? == Some(read) {
            remove_if_present(path)?;
        }
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        return Ok(Some(kept_as));
    }
    Err(io_error(path)(io::Error::new(
        ErrorKind::AlreadyExists,
        "too many .corrupt copies beside it; remove old ones",
    )))
}

fn corrupt_name(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".corrupt");
    if n > 0 {
        name.push(format!(".{n}"));
    }
    PathBuf::from(name)
}

fn identity(path: &Path) -> Result<Option<FileIdentity>, StoreError> {
    match fs::metadata(path) {
        Ok(meta) => Ok(Some((meta.dev(), meta.ino()))),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error(path)(error)),
    }
}

/// Rewrites the record at `path` under the current key if it is under another.
fn reseal_file(dir: &Path, path: &Path, sealing: &Sealing) -> Result<(), StoreError> {
    let Some((bytes, read)) = read_private(path)? else {
        return Ok(());
    };
    let resealed = sealing
        .keyring
        .reseal(&sealing.slot_hash, sealing.kind, &bytes)
        .map_err(|source| StoreError::sealed(path.display().to_string(), source))?;
    let Some(resealed) = resealed else {
        return Ok(());
    };

    // Only over the file that was read: a registration renamed into place meanwhile is newer.
    // (One renamed in the instant between this check and our rename would be replaced; the
    // next refresh would then be refused and the route ask for a sign-in.)
    if identity(path)? != Some(read) {
        return Ok(());
    }
    write_record(dir, path, &resealed)
}

fn write_record(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let written =
        write_temp(&temp, bytes).and_then(|()| fs::rename(&temp, path).map_err(io_error(path)));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written?;

    // The rename is durable only once the directory entry is.
    sync_dir(dir)
}

fn write_temp(temp: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(temp)
        .map_err(io_error(temp))?;

    // The umask can only narrow 0600, but a narrower mode is still not the mode we promise.
    file.set_permissions(Permissions::from_mode(FILE_MODE))
        .map_err(io_error(temp))?;
    file.write_all(bytes).map_err(io_error(temp))?;
    file.sync_all().map_err(io_error(temp))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error(dir))
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != ErrorKind::NotFound => Err(io_error(path)(error)),
        _ => Ok(()),
    }
}

fn lock_file(path: &Path) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io_error(path))?;
    tighten(path, &file)?;
    file.lock().map_err(io_error(path))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::secret::Secret;

    fn slot() -> Slot {
        Slot::new("atlassian", "https://mcp.atlassian.com/v1", None)
    }

    fn tokens(access: &str) -> StoredTokens {
        serde_json::from_value(serde_json::json!({
            "access_token": access, "refresh_token": format!("rt-{access}"),
            "expires_at": 1_748_779_200.5, "issued_at": 1_748_775_600.0,
        }))
        .expect("tokens")
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").mode() & 0o777
    }

    fn store() -> (tempfile::TempDir, FileStore) {
        let root = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(root.path().join("auth"), Keyring::default()).expect("store");
        (root, store)
    }

    #[test]
    fn new_creates_missing_directories_with_mode_0700() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("home/.mcp/auth");
        FileStore::new(dir.clone(), Keyring::default()).expect("store");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("home/.mcp")), 0o700);
    }

    #[test]
    fn new_tightens_an_existing_readable_directory_to_0700() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(root.path(), Permissions::from_mode(0o755)).expect("chmod");
        FileStore::new(root.path().to_path_buf(), Keyring::default()).expect("store");
        assert_eq!(mode(root.path()), 0o700);
    }

    #[test]
    fn new_refuses_a_directory_others_can_write_and_says_how_to_fix_it() {
        for insecure in [0o777, 0o770, 0o702] {
            let root = tempfile::tempdir().expect("tempdir");
            fs::set_permissions(root.path(), Permissions::from_mode(insecure)).expect("chmod");
            let error =
                FileStore::new(root.path().to_path_buf(), Keyring::default()).expect_err("refused");
            assert!(
                matches!(error, StoreError::InsecureDirectory { mode, .. } if mode == insecure)
            );
            let fix = format!("chmod 700 {}", root.path().display());
            assert!(error.to_string().contains(&fix), "{error}");
            assert_eq!(
                mode(root.path()),
                insecure,
                "a refused directory is left alone"
            );
        }
    }

    #[tokio::test]
    async fn saved_files_are_0600_even_over_a_world_writable_file() {
        let (_root, store) = store();
        let tokens_path = store.tokens_path(&slot());
        fs::write(&tokens_path, "{}").expect("write");
        fs::set_permissions(&tokens_path, Permissions::from_mode(0o777)).expect("chmod");
        store
            .save_tokens(&slot(), &tokens("a"))
            .await
            .expect("save");
        let client = StoredClient {
            client_id: "cid".into(),
            client_secret: Some(Secret::new("cs")),
            client_secret_expires_at: Some(0),
            redirect_uris: vec![],
            token_endpoint_auth_method: None,
            issuer: Some("https://auth.example".into()),
            extra: serde_json::Map::new(),
        };
        store.save_client(&slot(), &client).await.expect("save");
        drop(store.lock(&slot()).await.expect("lock"));
        assert_eq!(mode(&tokens_path), 0o600);
        assert_eq!(mode(&store.client_path(&slot())), 0o600);
        assert_eq!(
            mode(&store.dir().join(format!("{}.lock", slot().hash()))),
            0o600
        );
        let loaded = store
            .load_client(&slot())
            .await
            .expect("load")
            .expect("client");
        assert_eq!(loaded.issuer.as_deref(), Some("https://auth.example"));
    }

    #[tokio::test]
    async fn reading_a_file_others_can_read_tightens_it_to_0600() {
        let (_root, store) = store();
        store
            .save_tokens(&slot(), &tokens("a"))
            .await
            .expect("save");
        let path = store.tokens_path(&slot());
        fs::set_permissions(&path, Permissions::from_mode(0o644)).expect("chmod");
        let loaded = store
            .load_tokens(&slot())
            .await
            .expect("load")
            .expect("tokens");
        assert_eq!(loaded.access_token.secret(), "a");
        assert_eq!(mode(&path), 0o600);
    }

    #[tokio::test]
    async fn missing_files_load_as_empty() {
        let (_root, store) = store();
        assert!(store.load_tokens(&slot()).await.expect("load").is_none());
        assert!(store.load_client(&slot()).await.expect("load").is_none());
    }

    #[tokio::test]
    async fn a_crashed_write_leaves_the_previous_tokens() {
        let (_root, store) = store();
        store
            .save_tokens(&slot(), &tokens("a"))
            .await
            .expect("save");

        // A writer that died mid-write leaves only its temporary file, half written.
        let stale = store
            .dir()
            .join(format!(".{}_tokens.json.tmp-999999-0", slot().hash()));
        fs::write(&stale, br#"{"access_token": "b", "refresh_tok"#).expect("write");
        let loaded = store
            .load_tokens(&slot())
            .await
            .expect("load")
            .expect("tokens");
        assert_eq!(loaded.access_token.secret(), "a");

        store
            .save_tokens(&slot(), &tokens("c"))
            .await
            .expect("save");
        let loaded = store
            .load_tokens(&slot())
            .await
            .expect("load")
            .expect("tokens");
        assert_eq!(loaded.access_token.secret(), "c");
        assert_eq!(loaded.expires_at, Some(1_748_779_200.5));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_saves_never_leave_an_unparsable_file() {
        let (_root, store) = store();
        let store = Arc::new(store);
        store
            .save_tokens(&slot(), &tokens("first"))
            .await
            .expect("save");
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..16 {
            let store = store.clone();
            tasks.spawn(async move {
                for round in 0..10 {
                    let access = format!("w{writer}-r{round}-{}", "x".repeat(writer * 300));
                    store
                        .save_tokens(&slot(), &tokens(&access))
                        .await
                        .expect("save");
                }
            });
        }
        for _ in 0..4 {
            let store = store.clone();
            tasks.spawn(async move {
                for _ in 0..50 {
                    let loaded = store.load_tokens(&slot()).await.expect("always parses");
                    assert!(loaded.is_some());
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task");
        }
        let left: Vec<_> = fs::read_dir(store.dir())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .filter(|name| name.to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    #[tokio::test]
    async fn a_corrupt_file_is_kept_aside_and_reported_without_its_contents() {
        let (_root, store) = store();
        let path = store.tokens_path(&slot());
        let garbage = br#"{"access_token": "at-SECRET", "refresh_token": "rt-SEC"#;
        fs::write(&path, garbage).expect("write");

        let error = store.load_tokens(&slot()).await.expect_err("corrupt");
        let StoreError::Corrupt { kept_as, .. } = &error else {
            panic!("expected Corrupt, got {error:?}");
        };
        assert_eq!(kept_as, &corrupt_name(&path, 0));
        assert_eq!(fs::read(kept_as).expect("kept"), garbage);
        let shown = error.to_string();
        assert!(
            shown.contains("kept aside") && shown.contains("sign-in"),
            "{shown}"
        );
        assert!(!shown.contains("SEC"), "{shown}");
        assert!(store.load_tokens(&slot()).await.expect("load").is_none());

        // A second bad file does not overwrite the first one kept aside.
        fs::write(&path, b"").expect("write");
        let error = store.load_tokens(&slot()).await.expect_err("corrupt");
        assert!(matches!(&error, StoreError::Corrupt { kept_as, .. }
            if kept_as == &corrupt_name(&path, 1)));
        assert_eq!(fs::read(corrupt_name(&path, 0)).expect("kept"), garbage);
    }

    #[tokio::test]
    async fn a_wrongly_typed_value_is_reported_without_quoting_it() {
        let (_root, store) = store();
        let path = store.client_path(&slot());
        fs::write(
            &path,
            br#"{"client_id": "c", "client_secret_expires_at": "cs-SECRET"}"#,
        )
        .expect("write");
        let error = store.load_client(&slot()).await.expect_err("corrupt");
        assert!(matches!(error, StoreError::Corrupt { .. }));
        assert!(!format!("{error} {error:?}").contains("SECRET"), "{error}");
    }

    #[tokio::test]
    async fn python_proxy_files_load_from_its_layout() {
        let (_root, store) = store();
        let hash = slot().hash();
        fs::write(
            store.dir().join(format!("{hash}_tokens.json")),
            r#"{"access_token": "at-py", "token_type": "Bearer", "expires_in": 3600,
               "scope": "read:jira-work", "refresh_token": "rt-py",
               "expires_at": "2025-06-01T12:00:00.123456"}"#,
        )
        .expect("write");
        fs::write(
            store.dir().join(format!("{hash}_client_info.json")),
            r#"{"client_id": "cid-py", "client_secret": null,
               "redirect_uris": ["http://localhost:8080/oauth/callback"],
               "token_endpoint_auth_method": "none", "grant_types": ["authorization_code"],
               "response_types": ["code"], "client_name": "proxy",
               "client_id_issued_at": 1748779200}"#,
        )
        .expect("write");
        let tokens = store
            .load_tokens(&slot())
            .await
            .expect("load")
            .expect("tokens");
        assert_eq!(
            tokens.refresh_token.as_ref().map(Secret::expose),
            Some("rt-py")
        );
        assert!(
            tokens
                .expires_at
                .is_some_and(|at| (at - 1_748_779_200.123_456).abs() < 1e-5)
        );
        let client = store
            .load_client(&slot())
            .await
            .expect("load")
            .expect("client");
        assert_eq!(client.client_id, "cid-py");
        assert_eq!(client.extra["response_types"][0], "code");
    }

    #[tokio::test]
    async fn clear_removes_tokens_and_the_client_only_when_asked() {
        let (_root, store) = store();
        let client: StoredClient =
            serde_json::from_value(serde_json::json!({"client_id": "cid"})).expect("client");
        store
            .save_tokens(&slot(), &tokens("a"))
            .await
            .expect("save");
        store.save_client(&slot(), &client).await.expect("save");

        store.clear(&slot(), false).await.expect("clear");
        assert!(store.load_tokens(&slot()).await.expect("load").is_none());
        assert!(store.load_client(&slot()).await.expect("load").is_some());

        store.clear(&slot(), true).await.expect("clear");
        assert!(store.load_client(&slot()).await.expect("load").is_none());
        store
            .clear(&slot(), true)
            .await
            .expect("clearing an empty slot is fine");
    }

    fn keyring(keys: &[(&str, u8)]) -> Keyring {
        use base64::Engine;
        let keys = keys
            .iter()
            .map(|(id, byte)| crate::store::StoreKey {
                id: (*id).to_owned(),
                material: crate::store::KeyMaterial::from_base64(
                    &base64::engine::general_purpose::STANDARD.encode([*byte; 32]),
                )
                .expect("key"),
            })
            .collect();
        Keyring::new(keys)
    }

    fn sealed_store(dir: &Path, keys: &[(&str, u8)]) -> FileStore {
        FileStore::new(dir.to_path_buf(), keyring(keys)).expect("store")
    }

    #[tokio::test]
    async fn sealed_files_hold_no_token_text_and_load_back() {
        let (_root, plain) = store();
        let store = sealed_store(plain.dir(), &[("k1", 1)]);
        store
            .save_tokens(&slot(), &tokens("at-SECRET"))
            .await
            .expect("save");
        let on_disk = fs::read_to_string(store.tokens_path(&slot())).expect("read");
        assert!(
            !on_disk.contains("SECRET") && on_disk.contains("\"k1\""),
            "{on_disk}"
        );
        assert_eq!(mode(&store.tokens_path(&slot())), 0o600);
        let loaded = store
            .load_tokens(&slot())
            .await
            .expect("load")
            .expect("tokens");
        assert_eq!(loaded.access_token.secret(), "at-SECRET");
    }

    #[tokio::test]
    async fn a_sealed_file_without_its_key_names_the_key_and_stays_in_place() {
        let (_root, plain) = store();
        sealed_store(plain.dir(), &[("k-2026", 1)])
            .save_tokens(&slot(), &tokens("a"))
            .await
            .expect("save");
        let before = fs::read(plain.tokens_path(&slot())).expect("read");

        for reader in [&plain, &sealed_store(plain.dir(), &[("other", 2)])] {
            let error = reader.load_tokens(&slot()).await.expect_err("no key");
            assert!(
                matches!(&error, StoreError::KeyMissing { key_id, .. } if key_id == "k-2026"),
                "{error:?}"
            );
            assert!(error.to_string().contains("`k-2026`"), "{error}");
        }
        assert_eq!(
            fs::read(plain.tokens_path(&slot())).expect("still there"),
            before
        );
        assert!(!corrupt_name(&plain.tokens_path(&slot()), 0).exists());
    }

    #[tokio::test]
    async fn a_sealed_file_under_wrong_key_material_is_reported_not_kept_aside() {
        let (_root, plain) = store();
        sealed_store(plain.dir(), &[("k1", 1)])
            .save_tokens(&slot(), &tokens("a"))
            .await
            .expect("save");
        let error = sealed_store(plain.dir(), &[("k1", 9)])
            .load_tokens(&slot())
            .await
            .expect_err("wrong material");
        assert!(matches!(error, StoreError::Unsealable { .. }), "{error:?}");
        assert!(plain.tokens_path(&slot()).exists());
    }

    #[tokio::test]
    async fn with_the_old_key_kept_second_records_read_and_are_resealed_on_write() {
        let (_root, plain) = store();
        sealed_store(plain.dir(), &[("k1", 1)])
            .save_tokens(&slot(), &tokens("a"))
            .await
            .expect("save");
        let rotated = sealed_store(plain.dir(), &[("k2", 2), ("k1", 1)]);
        let loaded = rotated
            .load_tokens(&slot())
            .await
            .expect("load")
            .expect("tokens");
        rotated.save_tokens(&slot(), &loaded).await.expect("save");
        let on_disk = fs::read_to_string(plain.tokens_path(&slot())).expect("read");
        assert!(on_disk.contains("\"k2\""), "{on_disk}");
        let only_new = sealed_store(plain.dir(), &[("k2", 2)]);
        assert!(only_new.load_tokens(&slot()).await.expect("load").is_some());
    }

    #[tokio::test]
    async fn saving_tokens_moves_the_client_registration_to_the_current_key() {
        let (_root, plain) = store();
        let client: StoredClient = serde_json::from_value(
            serde_json::json!({"client_id": "cid", "client_secret": "cs-SECRET"}),
        )
        .expect("client");
        sealed_store(plain.dir(), &[("k1", 1)])
            .save_client(&slot(), &client)
            .await
            .expect("save");
        let rotated = sealed_store(plain.dir(), &[("k2", 2), ("k1", 1)]);
        rotated
            .save_tokens(&slot(), &tokens("a"))
            .await
            .expect("save");
        let on_disk = fs::read_to_string(plain.client_path(&slot())).expect("read");
        assert!(
            on_disk.contains("\"k2\"") && !on_disk.contains("SECRET"),
            "{on_disk}"
        );
        assert_eq!(mode(&plain.client_path(&slot())), 0o600);
        let only_new = sealed_store(plain.dir(), &[("k2", 2)]);
        let loaded = only_new
            .load_client(&slot())
            .await
            .expect("load")
            .expect("client");
        assert_eq!(loaded.client_id, "cid");
    }

    #[tokio::test]
    async fn plain_files_read_once_keys_are_set_and_unkeyed_writes_stay_plain() {
        let (_root, plain) = store();
        plain
            .save_tokens(&slot(), &tokens("a"))
            .await
            .expect("save");
        let written = fs::read_to_string(plain.tokens_path(&slot())).expect("read");
        assert!(written.contains("\"access_token\": \"a\""), "{written}");
        let sealed = sealed_store(plain.dir(), &[("k1", 1)]);
        let loaded = sealed
            .load_tokens(&slot())
            .await
            .expect("load")
            .expect("tokens");
        assert_eq!(loaded.access_token.secret(), "a");
    }

    #[test]
    fn flock_on_two_descriptions_excludes_within_one_process() {
        let root = tempfile::tempdir().expect("tempdir");
        let path = root.path().join("x.lock");
        let first = lock_file(&path).expect("lock");
        let second = File::open(&path).expect("open");
        assert!(second.try_lock().is_err());
        drop(first);
        second.try_lock().expect("free once the first is closed");
    }

    /// Asserts that `second` waits while `first` is held and proceeds once it is dropped.
    async fn assert_excludes(first: SlotLock, second: tokio::task::JoinHandle<SlotLock>) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !second.is_finished(),
            "second locker got in while the first held the slot"
        );
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("second locker gets in once the first lets go")
            .expect("task");
        drop(second);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lock_excludes_another_store_on_the_same_directory() {
        let (_root, store) = store();
        let other =
            Arc::new(FileStore::new(store.dir().to_path_buf(), Keyring::default()).expect("store"));
        let first = store.lock(&slot()).await.expect("lock");
        let second = tokio::spawn(async move { other.lock(&slot()).await.expect("lock") });
        assert_excludes(first, second).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lock_excludes_another_task_of_the_same_store() {
        let (_root, store) = store();
        let store = Arc::new(store);
        let first = store.lock(&slot()).await.expect("lock");
        let same = store.clone();
        let second = tokio::spawn(async move { same.lock(&slot()).await.expect("lock") });
        assert_excludes(first, second).await;

        // Other slots are independent.
        let elsewhere = Slot::new("other", "https://other.example/mcp", None);
        let _held = store.lock(&slot()).await.expect("lock");
        tokio::time::timeout(Duration::from_secs(5), store.lock(&elsewhere))
            .await
            .expect("another slot does not wait")
            .expect("lock");
    }
}
