//! The worker's key file: its node key's 32-byte seed, kept so that a worker is the
//! same node across restarts (same node id, so callers that trust it keep finding it).
//!
//! Format: the seed as 64 lower-case hex digits and a newline, nothing else. Created on
//! first start with mode 0600 (read and write for its owner only) at
//! [`default_path`], or where `worker --key PATH` says.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::protocol::identity::NodeKey;

/// File name of the key file in the data directory.
pub const KEY_FILE_NAME: &str = "worker.key";

/// Why a key file could not be read or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file exists but could not be read, or a new one could not be written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The file does not hold 64 hex digits.
    #[error(
        "key file {path} is not a nano-connect key (64 hex digits expected); \
         move it away to make a new identity"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// No data directory is known (no `$HOME`, no `$XDG_DATA_HOME`).
    #[error("no data directory for the key file: give one with --key PATH")]
    NoDataDir,
}

/// `$XDG_DATA_HOME/nano-connect/worker.key`, else `~/.local/share/nano-connect/worker.key`
/// (on Linux; each platform's data directory elsewhere).
pub fn default_path() -> Result<PathBuf, KeyFileError> {
    let base = dirs::data_dir().ok_or(KeyFileError::NoDataDir)?;
    Ok(base.join("nano-connect").join(KEY_FILE_NAME))
}

/// Reads the node key in `path`, or makes a new one there (mode 0600, parent folders
/// created) when there is no file. Returns the key and whether it was new.
pub fn load_or_create(path: &Path) -> Result<(NodeKey, bool), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let seed: [u8; 32] = hex::decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| KeyFileError::Malformed {
                    path: path.to_path_buf(),
                })?;
            Ok((NodeKey::from_seed(seed), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(parent) => {
                    std::fs::create_dir_all(parent).map_err(io)?;
                    parent
                }
                None => Path::new("."),
            };
            // Written whole to a private temporary file beside it (mode 0600), then put in
            // place only if no file is there yet (a link, atomic): two workers starting
            // at once never see half a key, and the one that comes second takes the
            // first one's key instead of failing.
            let key = NodeKey::generate();
            let mut file = tempfile::Builder::new()
                .prefix(".worker.key.")
                .tempfile_in(parent)
                .map_err(io)?;
            file.write_all(format!("{}\n", hex::encode(key.seed())).as_bytes())
                .map_err(io)?;
            file.as_file().sync_all().map_err(io)?;
            match file.persist_noclobber(path) {
                Ok(_) => Ok((key, true)),
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create(path)
                }
                Err(e) => Err(io(e.error)),
            }
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_file_is_private_and_gives_the_same_node_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("worker.key");
        let (first, new) = load_or_create(&path).unwrap();
        assert!(new);
        let (again, new) = load_or_create(&path).unwrap();
        assert!(!new);
        assert_eq!(first.node_id(), again.node_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn workers_starting_at_once_share_one_key_and_none_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.key");
        let start = std::sync::Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (path, start) = (path.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    load_or_create(&path).map(|(key, new)| (key.node_id(), new))
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let ids: Vec<_> = results
            .iter()
            .map(|r| r.as_ref().map(|(id, _)| *id).map_err(ToString::to_string))
            .collect();
        assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
        assert!(ids[0].is_ok(), "{ids:?}");
        let made = results
            .iter()
            .filter(|r| matches!(r, Ok((_, true))))
            .count();
        assert_eq!(made, 1, "exactly one start makes the key");
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left beside the key");
    }

    #[test]
    fn a_file_that_is_not_a_key_is_refused_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.key");
        std::fs::write(&path, "hello").unwrap();
        let e = load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello");
    }
}
