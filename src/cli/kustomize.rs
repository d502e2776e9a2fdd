//! `apply -k DIR` / `delete -k` / `diff -k`: a kustomization's common
//! subset, read in place so every problem still points at its file, line
//! and column: `resources` (files, directories, and directories with their
//! own kustomization), `namespace`, `namePrefix`, `nameSuffix`,
//! `commonLabels`, `labels` (`pairs`), `commonAnnotations`. Anything else
//! (patches, generators, remote bases, ...) is refused by name, with the
//! way around it: `kustomize build DIR | claude-failover apply -f -`.

use crate::manifest::{Decoded, LoadOptions, ManifestError, decode_single, load_paths};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FILE_NAMES: &[&str] = &["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Kustomize fields this subset does not implement (refused by name).
const UNSUPPORTED: &[&str] = &[
    "patches",
    "patchesStrategicMerge",
    "patchesJson6902",
    "replacements",
    "vars",
    "images",
    "replicas",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "generators",
    "transformers",
    "validators",
    "components",
    "crds",
    "bases",
    "helmCharts",
    "helmGlobals",
    "openapi",
    "configurations",
    "buildMetadata",
    "sortOptions",
];

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Kustomization {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    namespace: Option<String>,
    name_prefix: Option<String>,
    name_suffix: Option<String>,
    #[serde(default)]
    common_labels: BTreeMap<String, String>,
    #[serde(default)]
    labels: Vec<LabelSet>,
    #[serde(default)]
    common_annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LabelSet {
    #[serde(default)]
    pairs: BTreeMap<String, String>,
    #[serde(default)]
    include_selectors: bool,
    #[serde(default)]
    include_templates: bool,
}

fn err(file: &Path, message: String) -> ManifestError {
    ManifestError {
        file: file.display().to_string(),
        pos: crate::manifest::yaml::Pos { line: 1, col: 1 },
        path: "(file)".into(),
        message,
    }
}

fn kustomization_file(dir: &Path) -> Option<PathBuf> {
    FILE_NAMES.iter().map(|f| dir.join(f)).find(|p| p.is_file())
}

/// The objects a kustomization directory declares, transformed; or every
/// problem found.
pub fn load(dir: &Path, namespace: &str) -> Result<Vec<Decoded>, Vec<ManifestError>> {
    load_at(dir, namespace, 0)
}

fn load_at(dir: &Path, namespace: &str, depth: usize) -> Result<Vec<Decoded>, Vec<ManifestError>> {
    let Some(file) = kustomization_file(dir) else {
        return Err(vec![err(
            dir,
            "no kustomization.yaml in this directory (-k takes a kustomization directory)".into(),
        )]);
    };
    if depth > 16 {
        return Err(vec![err(
            &file,
            "kustomizations nest more than 16 deep (a cycle?)".into(),
        )]);
    }
    let bytes = std::fs::read(&file).map_err(|e| vec![err(&file, e.to_string())])?;
    let shown = file.display().to_string();
    // Name a kustomize feature this subset lacks before strict decoding
    // calls it an unknown field.
    if let Ok(docs) = crate::manifest::yaml::parse_documents(&String::from_utf8_lossy(&bytes))
        && let Some(root) = docs.first().and_then(|d| d.root.as_ref())
    {
        for f in UNSUPPORTED {
            if let Some((key, _)) = root.entry(f) {
                return Err(vec![ManifestError {
                    file: shown,
                    pos: key.pos,
                    path: (*f).into(),
                    message: format!(
                        "kustomize's `{f}` is not supported by -k here (supported: resources, namespace, namePrefix, nameSuffix, commonLabels, labels, commonAnnotations); render it with `kustomize build {} | claude-failover apply -f -`",
                        dir.display()
                    ),
                }]);
            }
        }
    }
    let k: Kustomization = decode_single(&shown, &bytes).map_err(|e| vec![e])?;
    if let Some(kind) = &k.kind
        && kind != "Kustomization"
    {
        return Err(vec![err(
            &file,
            format!("kind is `{kind}`, expected Kustomization"),
        )]);
    }
    let _ = &k.api_version;
    let ns = k.namespace.as_deref().unwrap_or(namespace);
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for r in &k.resources {
        if r.contains("://") || r.starts_with("github.com/") {
            errors.push(err(
                &file,
                format!("resource `{r}`: remote resources are not supported by -k here"),
            ));
            continue;
        }
        let p = dir.join(r);
        if p.is_dir() && kustomization_file(&p).is_some() {
            match load_at(&p, ns, depth + 1) {
                Ok(o) => objects.extend(o),
                Err(e) => errors.extend(e),
            }
        } else if p.exists() {
            let loaded = load_paths(
                std::slice::from_ref(&p),
                &LoadOptions {
                    recursive: false,
                    namespace: ns.to_string(),
                },
            );
            errors.extend(loaded.errors);
            objects.extend(loaded.objects);
        } else {
            errors.push(err(
                &file,
                format!("resource `{r}` does not exist ({})", p.display()),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut labels = k.common_labels.clone();
    for set in &k.labels {
        let _ = (set.include_selectors, set.include_templates);
        labels.extend(set.pairs.clone());
    }
    for d in &mut objects {
        transform(d, &k, ns, &labels);
    }
    Ok(objects)
}

fn transform(d: &mut Decoded, k: &Kustomization, ns: &str, labels: &BTreeMap<String, String>) {
    let name = format!(
        "{}{}{}",
        k.name_prefix.as_deref().unwrap_or_default(),
        d.object.name(),
        k.name_suffix.as_deref().unwrap_or_default()
    );
    let meta = d.object.meta_mut();
    meta.name = Some(name.clone());
    if k.namespace.is_some() || meta.namespace.is_none() {
        meta.namespace = Some(ns.to_string());
    }
    if !labels.is_empty() {
        meta.labels
            .get_or_insert_with(Default::default)
            .extend(labels.clone());
    }
    if !k.common_annotations.is_empty() {
        meta.annotations
            .get_or_insert_with(Default::default)
            .extend(k.common_annotations.clone());
    }
    let dm = &mut d.declared["metadata"];
    if !dm.is_object() {
        *dm = serde_json::json!({});
    }
    dm["name"] = name.into();
    for (field, map) in [("labels", labels), ("annotations", &k.common_annotations)] {
        for (key, v) in map {
            if !dm[field].is_object() {
                dm[field] = serde_json::json!({});
            }
            dm[field][key] = v.clone().into();
        }
    }
}
