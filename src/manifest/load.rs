//! Collecting manifests from files, directories (optionally recursive) and
//! standard input, and catching the same object declared twice.

use super::decode::{Decoded, ManifestError, decode_file};
use super::yaml::Pos;
use crate::api::ObjectKey;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Descend into sub-directories.
    pub recursive: bool,
    /// Namespace given to objects that declare none.
    pub namespace: String,
}

/// Everything found under the given paths.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid objects, each declared once.
    pub objects: Vec<Decoded>,
    /// One line per problem.
    pub errors: Vec<ManifestError>,
    /// Every manifest file read (bad ones included).
    pub files: Vec<String>,
    /// Objects declared more than once: none of their declarations is used.
    pub contested: HashSet<ObjectKey>,
}

impl Loaded {
    /// Files that had at least one problem.
    pub fn bad_files(&self) -> HashSet<&str> {
        self.errors.iter().map(|e| e.file.as_str()).collect()
    }
}

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn file_error(file: &str, message: String) -> ManifestError {
    ManifestError {
        file: file.to_string(),
        pos: Pos { line: 1, col: 1 },
        path: "(file)".into(),
        message,
    }
}

/// Reads `paths` (`-` is standard input). A directory contributes its
/// `*.yaml`, `*.yml` and `*.json` files, sorted, skipping hidden entries;
/// with `recursive`, those of its sub-directories too.
pub fn load_paths(paths: &[PathBuf], opts: &LoadOptions) -> Loaded {
    let mut files: Vec<(String, Result<Vec<u8>, String>)> = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut buf = Vec::new();
            let r = std::io::stdin()
                .take(super::MAX_FILE_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .map(|_| buf)
                .map_err(|e| format!("cannot read standard input: {e}"));
            files.push(("<stdin>".into(), r));
            continue;
        }
        match std::fs::metadata(p) {
            Err(e) => errors.push(file_error(
                &p.display().to_string(),
                format!("cannot read: {e}"),
            )),
            Ok(m) if m.is_dir() => {
                let mut ancestors = Vec::new();
                walk(p, opts.recursive, &mut ancestors, &mut files, &mut errors);
            }
            Ok(m) => files.push((
                p.display().to_string(),
                regular(&m).and_then(|_| read_limited(p)),
            )),
        }
    }
    let mut loaded = Loaded {
        errors,
        ..Default::default()
    };
    for (name, bytes) in files {
        loaded.files.push(name.clone());
        match bytes {
            Err(e) => loaded.errors.push(file_error(&name, e)),
            Ok(bytes) => {
                let (objs, errs) = decode_file(&name, &bytes);
                loaded.objects.extend(objs);
                loaded.errors.extend(errs);
            }
        }
    }
    for d in &mut loaded.objects {
        if d.object.meta().namespace.is_none() {
            d.object.meta_mut().namespace = Some(opts.namespace.clone());
        }
    }
    find_duplicates(&mut loaded);
    loaded
}

/// What a special file is, by its type.
fn special_kind(t: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else {
        None
    }
}

/// Refuses anything but a regular file at once: reading a FIFO (or a
/// device) would block, or never end.
fn regular(m: &std::fs::Metadata) -> Result<(), String> {
    match special_kind(m.file_type()) {
        Some(what) => Err(format!(
            "is {what}, not a regular file: manifests are read from regular files only"
        )),
        None => Ok(()),
    }
}

/// Reads at most [`super::MAX_FILE_BYTES`] (+1, to tell a file too large)
/// of a regular file. Opened without blocking, and checked again once open:
/// a file swapped for a FIFO after it was listed is refused too.
fn read_limited(p: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| format!("cannot read: {e}"))?;
    regular(&f.metadata().map_err(|e| format!("cannot read: {e}"))?)?;
    let mut buf = Vec::new();
    f.take(super::MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(buf)
}

fn walk(
    dir: &Path,
    recursive: bool,
    ancestors: &mut Vec<PathBuf>,
    files: &mut Vec<(String, Result<Vec<u8>, String>)>,
    errors: &mut Vec<ManifestError>,
) {
    let name = dir.display().to_string();
    let canonical = match std::fs::canonicalize(dir) {
        Ok(c) => c,
        Err(e) => return errors.push(file_error(&name, format!("cannot resolve directory: {e}"))),
    };
    if let Some(a) = ancestors.iter().find(|a| **a == canonical) {
        return errors.push(file_error(
            &name,
            format!("symlink loop: this directory is {} again", a.display()),
        ));
    }
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => return errors.push(file_error(&name, format!("cannot list directory: {e}"))),
    };
    entries.sort();
    ancestors.push(canonical);
    for path in entries {
        if hidden(&path) {
            continue;
        }
        let shown = path.display().to_string();
        match std::fs::metadata(&path) {
            Err(e) => {
                // A dangling symlink or an unreadable entry: say so if it
                // looks like a manifest or could be a directory.
                if is_manifest(&path)
                    || std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_symlink())
                {
                    errors.push(file_error(&shown, format!("cannot read: {e}")));
                }
            }
            Ok(m) if m.is_dir() => {
                if recursive {
                    walk(&path, recursive, ancestors, files, errors);
                }
            }
            Ok(m) if is_manifest(&path) => {
                files.push((shown, regular(&m).and_then(|_| read_limited(&path))))
            }
            Ok(_) => {}
        }
    }
    ancestors.pop();
}

fn find_duplicates(loaded: &mut Loaded) {
    let mut first: HashMap<ObjectKey, usize> = HashMap::new();
    let mut dup = vec![false; loaded.objects.len()];
    for (i, d) in loaded.objects.iter().enumerate() {
        let key = d.object.key();
        match first.get(&key) {
            None => {
                first.insert(key, i);
            }
            Some(&j) => {
                let earlier = &loaded.objects[j].source;
                loaded.errors.push(ManifestError {
                    file: d.source.file.clone(),
                    pos: d.source.pos,
                    path: "metadata.name".into(),
                    message: format!("{key} is defined twice: here and at {earlier}"),
                });
                dup[i] = true;
                dup[j] = true;
                loaded.contested.insert(key);
            }
        }
    }
    let mut i = 0;
    loaded.objects.retain(|_| {
        let keep = !dup[i];
        i += 1;
        keep
    });
}
