//! A policy directory or an OPA bundle (a directory or a `.tar.gz`): its Rego
//! files, its data documents (`data.json` / `data.yaml`, each placed at the
//! path of the directory holding it, as OPA does) and its `.manifest`, whose
//! `roots` every package and data document must lie under.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use super::source::{
    is_data_file, is_policy_file, read_sources, scan_dir, FileStamp, PolicySource, MANIFEST,
};
use super::PolicyError;

/// The most a bundle archive may unpack to; a larger one is refused.
const MAX_UNPACKED_BYTES: u64 = 64 << 20;

/// What a directory or bundle holds.
pub(super) struct Loaded {
    pub(super) sources: Vec<PolicySource>,
    /// Every data document, merged into one tree (`null` when there is none).
    pub(super) data: Json,
}

fn is_archive(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

/// The files whose change means a reload: a directory's policy, data and
/// manifest files, or the archive itself.
pub(super) fn scan(path: &Path, include_tests: bool) -> Result<Vec<FileStamp>, PolicyError> {
    if is_archive(path) {
        let meta = std::fs::metadata(path).map_err(|source| PolicyError::ReadFile {
            file: path.to_owned(),
            source,
        })?;
        return Ok(vec![FileStamp {
            path: path.to_owned(),
            modified: meta.modified().ok(),
            len: meta.len(),
        }]);
    }
    scan_dir(path, include_tests)
}

fn bundle_error(file: &Path, message: impl Into<String>) -> PolicyError {
    PolicyError::Bundle {
        file: file.to_owned(),
        message: message.into(),
    }
}

/// Reads what a [`scan`] found.
pub(super) fn read(
    path: &Path,
    stamps: &[FileStamp],
    include_tests: bool,
) -> Result<Loaded, PolicyError> {
    let mut files = Files::default();
    if is_archive(path) {
        files.read_archive(path, include_tests)?;
    } else {
        files.sources = read_sources(path, stamps)?;
        for stamp in stamps.iter().filter(|s| !is_policy_file(&s.path, true)) {
            let text =
                std::fs::read_to_string(&stamp.path).map_err(|source| PolicyError::ReadFile {
                    file: stamp.path.clone(),
                    source,
                })?;
            let relative = stamp.path.strip_prefix(path).unwrap_or(&stamp.path);
            files.add_other(&stamp.path, relative, text)?;
        }
    }
    files.finish(path)
}

#[derive(Default)]
struct Files {
    sources: Vec<PolicySource>,
    /// Data documents with the directory path (segments) they sit at.
    documents: Vec<(PathBuf, Vec<String>, Json)>,
    roots: Option<(PathBuf, Vec<String>)>,
}

impl Files {
    /// A data document or the manifest; `relative` is its path in the bundle.
    fn add_other(&mut self, file: &Path, relative: &Path, text: String) -> Result<(), PolicyError> {
        if relative == Path::new(MANIFEST) {
            let manifest: Json = serde_json::from_str(&text)
                .map_err(|e| bundle_error(file, format!("manifest is not JSON: {e}")))?;
            let roots = match manifest.get("roots") {
                None => vec![String::new()],
                Some(Json::Array(roots)) => roots
                    .iter()
                    .map(|r| r.as_str().map(|r| r.trim_matches('/').to_owned()))
                    .collect::<Option<_>>()
                    .ok_or_else(|| bundle_error(file, "manifest roots must be strings"))?,
                Some(_) => return Err(bundle_error(file, "manifest roots must be an array")),
            };
            self.roots = Some((file.to_owned(), roots));
            return Ok(());
        }
        let value: Json = if file.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| bundle_error(file, e.to_string()))?
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| bundle_error(file, e.to_string()))?
        };
        let at = relative
            .parent()
            .map(|p| {
                p.components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        self.documents.push((file.to_owned(), at, value));
        Ok(())
    }

    fn read_archive(&mut self, archive: &Path, include_tests: bool) -> Result<(), PolicyError> {
        let file = std::fs::File::open(archive).map_err(|source| PolicyError::ReadFile {
            file: archive.to_owned(),
            source,
        })?;
        let unpacked = flate2::read::GzDecoder::new(file).take(MAX_UNPACKED_BYTES + 1);
        let mut tar = tar::Archive::new(unpacked);
        let bad = |e: std::io::Error| bundle_error(archive, format!("cannot unpack: {e}"));
        let mut total = 0u64;
        for entry in tar.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let relative: PathBuf = entry
                .path()
                .map_err(bad)?
                .components()
                .filter(|c| matches!(c, std::path::Component::Normal(_)))
                .collect();
            total += entry.header().size().map_err(bad)?;
            if total > MAX_UNPACKED_BYTES {
                return Err(bundle_error(archive, "unpacks to more than 64 MiB"));
            }
            let wanted = relative == Path::new(MANIFEST)
                || is_data_file(&relative)
                || is_policy_file(&relative, include_tests);
            if !wanted {
                continue;
            }
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(bad)?;
            let shown = archive.join(&relative);
            if is_policy_file(&relative, true) {
                self.sources.push(PolicySource {
                    name: relative.display().to_string(),
                    file: shown,
                    text,
                });
            } else {
                self.add_other(&shown, &relative, text)?;
            }
        }
        if total > MAX_UNPACKED_BYTES {
            return Err(bundle_error(archive, "unpacks to more than 64 MiB"));
        }
        if self.sources.is_empty() {
            return Err(PolicyError::NoPolicies(archive.to_owned()));
        }
        self.sources.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(())
    }

    fn finish(self, path: &Path) -> Result<Loaded, PolicyError> {
        if let Some((manifest, roots)) = &self.roots {
            for source in &self.sources {
                let package = package_of(&source.text).unwrap_or_default();
                let segments: Vec<String> = package.split('.').map(str::to_owned).collect();
                if !under_roots(&segments, roots) {
                    return Err(bundle_error(
                        &source.file,
                        format!(
                            "package {package} is outside the manifest's roots {roots:?} ({})",
                            manifest.display()
                        ),
                    ));
                }
            }
            for (file, at, value) in &self.documents {
                check_data_roots(file, at, value, roots)?;
            }
        }
        let mut data = Json::Null;
        for (file, at, value) in self.documents {
            merge_at(&mut data, &at, value)
                .map_err(|key| bundle_error(&file, format!("data conflicts at {key}")))?;
        }
        if self.sources.is_empty() {
            return Err(PolicyError::NoPolicies(path.to_owned()));
        }
        Ok(Loaded {
            sources: self.sources,
            data,
        })
    }
}

/// The package a Rego text declares (`a.b` for `package a.b`).
fn package_of(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix("package ")?;
        Some(rest.split('#').next()?.trim().to_owned())
    })
}

fn is_prefix(prefix: &[String], path: &[String]) -> bool {
    prefix.len() <= path.len() && prefix.iter().zip(path).all(|(a, b)| a == b)
}

fn root_segments(root: &str) -> Vec<String> {
    if root.is_empty() {
        Vec::new()
    } else {
        root.split('/').map(str::to_owned).collect()
    }
}

fn under_roots(path: &[String], roots: &[String]) -> bool {
    roots.iter().any(|r| is_prefix(&root_segments(r), path))
}

/// Data at `at` lies under a root, or is an object whose keys all do.
fn check_data_roots(
    file: &Path,
    at: &[String],
    value: &Json,
    roots: &[String],
) -> Result<(), PolicyError> {
    if under_roots(at, roots) {
        return Ok(());
    }
    let leads_to_root = roots.iter().any(|r| is_prefix(at, &root_segments(r)));
    match value {
        Json::Object(map) if leads_to_root => map.iter().try_for_each(|(key, value)| {
            let mut path = at.to_vec();
            path.push(key.clone());
            check_data_roots(file, &path, value, roots)
        }),
        _ => Err(bundle_error(
            file,
            format!(
                "data at {} is outside the manifest's roots {roots:?}",
                if at.is_empty() {
                    "the top".to_owned()
                } else {
                    at.join("/")
                }
            ),
        )),
    }
}

/// Merges `value` into `tree` at `at`; objects merge key by key, anything
/// else set twice is a conflict (the key is returned).
fn merge_at(tree: &mut Json, at: &[String], value: Json) -> Result<(), String> {
    let mut node = tree;
    for key in at {
        if node.is_null() {
            *node = Json::Object(Map::new());
        }
        let Json::Object(map) = node else {
            return Err(key.clone());
        };
        node = map.entry(key.clone()).or_insert(Json::Null);
    }
    merge(node, value, at.last().cloned().unwrap_or_default())
}

fn merge(node: &mut Json, value: Json, key: String) -> Result<(), String> {
    match (node, value) {
        (node @ Json::Null, value) => {
            *node = value;
            Ok(())
        }
        (Json::Object(existing), Json::Object(incoming)) => {
            for (k, v) in incoming {
                merge(existing.entry(k.clone()).or_insert(Json::Null), v, k)?;
            }
            Ok(())
        }
        _ => Err(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn segments(path: &str) -> Vec<String> {
        root_segments(path)
    }

    #[test]
    fn data_merges_by_directory_and_conflicts_are_errors() {
        let mut tree = Json::Null;
        merge_at(&mut tree, &segments("a/b"), json!({"x": 1})).unwrap();
        merge_at(&mut tree, &[], json!({"a": {"c": 2}})).unwrap();
        assert_eq!(tree, json!({"a": {"b": {"x": 1}, "c": 2}}));
        assert_eq!(
            merge_at(&mut tree, &segments("a/b"), json!({"x": 3})),
            Err("x".to_owned())
        );
    }

    #[test]
    fn roots_cover_packages_and_data() {
        let roots = vec!["envoy/authz".to_owned(), "users".to_owned()];
        assert!(under_roots(&segments("envoy/authz/x"), &roots));
        assert!(!under_roots(&segments("envoy"), &roots));
        let file = Path::new("data.json");
        check_data_roots(
            file,
            &[],
            &json!({"users": [1], "envoy": {"authz": {}}}),
            &roots,
        )
        .unwrap();
        assert!(check_data_roots(file, &[], &json!({"other": 1}), &roots).is_err());
        assert!(check_data_roots(file, &[], &json!({"envoy": {"x": 1}}), &roots).is_err());
        assert_eq!(package_of("# c\npackage a.b # x\n"), Some("a.b".into()));
    }
}
