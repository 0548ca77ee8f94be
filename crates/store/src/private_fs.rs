//! Files and directories holding state or secrets (the data directory, the SQLite database
//! and its -wal/-shm, key files, artifacts) belong to builder's user alone.
//!
//! Modes are set explicitly after creating, never left to the umask: `mode(0o600)` on open
//! only asks for at most those bits, and a umask of 0 would still be honoured by every
//! library that creates files with 0644. Paths that exist from an older start are tightened,
//! with an INFO line saying what changed.

use crate::StoreError;
use std::path::Path;

pub const PRIVATE_DIR_MODE: u32 = 0o700;
pub const PRIVATE_FILE_MODE: u32 = 0o600;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` as a private directory (missing parents get the usual modes), or tightens
/// it if it exists. A sticky directory such as `/tmp` is shared by design and left alone.
pub fn ensure_private_dir(dir: &Path) -> Result<(), StoreError> {
    if !create_private_dir_if_missing(dir)? {
        tighten(dir, PRIVATE_DIR_MODE)?;
    }
    Ok(())
}

/// Creates `dir` as a private directory if it does not exist; an existing one is not
/// touched (it may be a directory the operator shares on purpose). True if it was created.
pub fn create_private_dir_if_missing(dir: &Path) -> Result<bool, StoreError> {
    if dir.is_dir() {
        return Ok(false);
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        // Another process made it first; it is theirs to have set up.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(io_err(dir)(e)),
    }
    set_mode(dir, PRIVATE_DIR_MODE)?;
    Ok(true)
}

/// Creates an empty private file at `path` if there is none, or tightens the existing one.
pub fn ensure_private_file(path: &Path) -> Result<(), StoreError> {
    match new_private_file(path) {
        Ok(_) => Ok(()),
        Err(StoreError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            tighten(path, PRIVATE_FILE_MODE).map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Creates a new file (failing if it exists) readable and writable by its owner only.
#[cfg(unix)]
pub fn new_private_file(path: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
        .map_err(io_err(path))?;
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))
        .map_err(io_err(path))?;
    Ok(file)
}

#[cfg(not(unix))]
pub fn new_private_file(path: &Path) -> Result<std::fs::File, StoreError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(path))
}

/// Removes group and other permissions from an existing `path` (at most `mode` remains),
/// logging the change. False if there was nothing to change or nothing there.
#[cfg(unix)]
pub fn tighten(path: &Path, mode: u32) -> Result<bool, StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(path)(e)),
    };
    // A symlink's own mode means nothing, and following it could chmod someone else's file.
    if meta.file_type().is_symlink() {
        return Ok(false);
    }
    let current = meta.permissions().mode() & 0o7777;
    if meta.is_dir() && current & 0o1000 != 0 {
        tracing::warn!(
            path = %path.display(),
            "this directory is shared (sticky bit): not making it private; give builder a \
             directory of its own"
        );
        return Ok(false);
    }
    let wanted = current & mode;
    if wanted == current {
        return Ok(false);
    }
    set_mode(path, wanted)?;
    tracing::info!(
        path = %path.display(),
        was = %format!("{current:04o}"),
        now = %format!("{wanted:04o}"),
        "tightened permissions: state and secrets are for builder's user only"
    );
    Ok(true)
}

#[cfg(not(unix))]
pub fn tighten(_path: &Path, _mode: u32) -> Result<bool, StoreError> {
    Ok(false)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<(), StoreError> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
    }

    #[test]
    fn creates_private_and_tightens_existing() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("a").join("data");
        ensure_private_dir(&dir).expect("create");
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("f");
        ensure_private_file(&file).expect("create");
        assert_eq!(mode(&file), 0o600);

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        ensure_private_dir(&dir).expect("tighten");
        ensure_private_file(&file).expect("tighten");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
        // Owner bits are kept as they are: a read-only file stays read-only.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).expect("chmod");
        assert!(tighten(&file, PRIVATE_FILE_MODE).expect("tighten"));
        assert_eq!(mode(&file), 0o400);
        assert!(!tighten(&root.path().join("missing"), 0o600).expect("missing is fine"));
    }

    #[test]
    fn an_existing_shared_directory_is_not_chmodded() {
        let root = tempfile::tempdir().expect("temp dir");
        let shared = root.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        ensure_private_dir(&shared).expect("left alone");
        assert_eq!(mode(&shared), 0o1777);
        assert!(!create_private_dir_if_missing(&shared).expect("exists"));
    }
}
