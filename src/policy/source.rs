//! Finding and reading the files of a policy directory: Rego files, and the
//! data documents and manifest of an OPA bundle (see `bundle.rs`).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::PolicyError;

/// How deep `load` descends into sub-directories of the policy directory.
const MAX_DIR_DEPTH: usize = 8;

/// Where a file's content stood when it was read; a change means reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileStamp {
    pub(super) path: PathBuf,
    pub(super) modified: Option<SystemTime>,
    pub(super) len: u64,
}

/// One policy file: its name for regorus (relative to the policy directory),
/// where it lives, and its text.
pub(super) struct PolicySource {
    pub(super) name: String,
    pub(super) file: PathBuf,
    pub(super) text: String,
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

/// A `.rego` file; `*_test.rego` only when tests are wanted.
pub(super) fn is_policy_file(path: &Path, include_tests: bool) -> bool {
    let name = file_name(path);
    name.ends_with(".rego") && (include_tests || !name.ends_with("_test.rego"))
}

/// The name OPA gives a bundle's manifest, at the bundle's root.
pub(super) const MANIFEST: &str = ".manifest";

/// A bundle's data document (`data.json` or `data.yaml`), at any depth.
pub(super) fn is_data_file(path: &Path) -> bool {
    matches!(file_name(path), "data.json" | "data.yaml" | "data.yml")
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// The policy files, data documents and manifest under `dir`, sorted, with
/// their sizes and mtimes (symlinks followed, so a ConfigMap update shows as
/// a change).
pub(super) fn scan_dir(dir: &Path, include_tests: bool) -> Result<Vec<FileStamp>, PolicyError> {
    fn walk(
        dir: &Path,
        depth: usize,
        include_tests: bool,
        out: &mut Vec<FileStamp>,
    ) -> Result<(), PolicyError> {
        let read_err = |source| PolicyError::ReadDir {
            dir: dir.to_owned(),
            source,
        };
        for entry in std::fs::read_dir(dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            let manifest = depth == 0 && file_name(&path) == MANIFEST;
            if is_hidden(&path) && !manifest {
                continue;
            }
            let meta = std::fs::metadata(&path).map_err(|source| PolicyError::ReadFile {
                file: path.clone(),
                source,
            })?;
            if meta.is_dir() {
                if depth < MAX_DIR_DEPTH {
                    walk(&path, depth + 1, include_tests, out)?;
                }
            } else if meta.is_file()
                && (manifest || is_data_file(&path) || is_policy_file(&path, include_tests))
            {
                out.push(FileStamp {
                    modified: meta.modified().ok(),
                    len: meta.len(),
                    path,
                });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, 0, include_tests, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Reads the Rego files of a scan, each named by its path relative to `dir`.
pub(super) fn read_sources(
    dir: &Path,
    stamps: &[FileStamp],
) -> Result<Vec<PolicySource>, PolicyError> {
    let rego: Vec<&FileStamp> = stamps
        .iter()
        .filter(|s| is_policy_file(&s.path, true))
        .collect();
    if rego.is_empty() {
        return Err(PolicyError::NoPolicies(dir.to_owned()));
    }
    rego.into_iter()
        .map(|stamp| {
            let text =
                std::fs::read_to_string(&stamp.path).map_err(|source| PolicyError::ReadFile {
                    file: stamp.path.clone(),
                    source,
                })?;
            let name = stamp.path.strip_prefix(dir).unwrap_or(&stamp.path);
            Ok(PolicySource {
                name: name.display().to_string(),
                file: stamp.path.clone(),
                text,
            })
        })
        .collect()
}
