//! Modes of the files and directories the sidecar writes. Each is set
//! explicitly rather than left to the umask: a permissive umask (0, as some
//! container images run with) must not leave a store file or a keyring
//! readable by other local users. Sockets get their configured mode in
//! [`crate::listen`].

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the directories the sidecar keeps its data in.
pub const PRIVATE_DIR: u32 = 0o700;
/// Mode of the files it writes: the store, keyrings, passwords.
pub const PRIVATE_FILE: u32 = 0o600;

/// Creates `dir` (and any missing parents, each 0700 at most) and sets `dir`
/// itself to 0700, whatever it was.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(PRIVATE_DIR))
}

/// Creates the file at `path` if missing, and sets it to 0600 either way,
/// without touching its content.
pub fn private_file(path: &Path) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_FILE)
        .open(path)?;
    std::fs::set_permissions(path, Permissions::from_mode(PRIVATE_FILE))
}

/// Creates the parent directories of a file about to be written: those that
/// are missing get 0700 at most; existing ones are left as they are (a
/// keyring may well live in a shared configuration directory).
pub fn parent_dirs(path: &Path) -> io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR)
            .create(dir),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn modes_are_set_whatever_was_there() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, Permissions::from_mode(0o777)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);

        let file = dir.join("store");
        std::fs::write(&file, b"kept").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o666)).unwrap();
        private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read(&file).unwrap(), b"kept");
    }
}
