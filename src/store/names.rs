//! Keys checked at the store's boundary: a namespace and a name are
//! DNS-1123 labels, so no caller (a verb, an API call, an import) can make
//! the store read, write or remove a file outside its directory.

use super::local::{Result, StoreError};
use crate::api::ObjectKey;
use crate::manifest::validate::dns1123_label;

/// Refuses a key whose namespace or name is not a DNS-1123 label.
pub(super) fn check_key(key: &ObjectKey) -> Result<()> {
    let bad = |what: &str, e: String| StoreError::Invalid {
        key: key.clone(),
        message: format!("{what}: {e}"),
    };
    dns1123_label(&key.namespace).map_err(|e| bad("namespace", e))?;
    dns1123_label(&key.name).map_err(|e| bad("name", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Kind;

    #[test]
    fn path_like_names_are_refused() {
        for (ns, name) in [
            ("default", "../../accounts/default/work"),
            ("default", "../../../victim"),
            ("default", ".."),
            ("default", "a/b"),
            ("..", "a"),
            ("default", ""),
            ("default", "a\0b"),
            ("default", "A"),
        ] {
            let e = check_key(&ObjectKey::new(Kind::Task, ns, name)).unwrap_err();
            assert!(matches!(e, StoreError::Invalid { .. }), "{ns}/{name}: {e}");
        }
        check_key(&ObjectKey::new(Kind::Task, "default", "ccl-0")).unwrap();
    }
}
