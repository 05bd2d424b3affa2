//! Property-based fuzzing of what the runtime reads from the shared directory: the manifest
//! parser and the name/path checks that keep every file a manifest names inside its version
//! directory. Whatever the text, parsing gives a manifest or a typed error (never a panic),
//! and an accepted manifest can never point outside its directory.
//!
//! `make test` runs proptest's default cases; `make reliability` raises `PROPTEST_CASES`.

use std::path::{Component, Path};

use kiln::layout::{check_name, is_contained_relative};
use kiln::{Digest, Manifest, ManifestFile};
use proptest::prelude::*;

/// Path-ish strings built from the pieces traversal tricks use.
fn tricky_path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just("".to_owned()),
            Just("/".to_owned()),
            Just("\\".to_owned()),
            Just("%2e%2e".to_owned()),
            Just("\u{0}".to_owned()),
            Just("current".to_owned()),
            Just(".kiln".to_owned()),
            Just("kiln-manifest.json".to_owned()),
            Just("é".to_owned()),
            "[a-z0-9._-]{1,8}",
        ],
        1..6,
    )
    .prop_map(|parts| parts.join("/"))
}

fn manifest() -> impl Strategy<Value = Manifest> {
    (
        "[a-z0-9_-]{1,12}",
        "[a-z0-9._-]{1,12}",
        prop::collection::vec((tricky_path(), any::<[u8; 32]>(), any::<u64>()), 0..5),
        any::<u32>(),
    )
        .prop_map(|(model, version, files, schema)| Manifest {
            schema: if schema % 4 == 0 { schema } else { 1 },
            model,
            version,
            source: Some("s3://bucket/key".into()),
            etag: None,
            version_id: None,
            signer: None,
            created: "2026-11-23T00:00:00Z".into(),
            files: files
                .into_iter()
                .map(|(path, sha, size)| ManifestFile {
                    path,
                    sha256: Digest::of(&sha),
                    size,
                })
                .collect(),
        })
}

fn stays_inside(path: &str) -> bool {
    let mut depth = 0i32;
    for c in Path::new(path).components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth -= 1,
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    depth > 0
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = Manifest::from_json(Path::new("m.json"), &text);
    }

    #[test]
    fn accepted_manifests_stay_inside_and_round_trip(m in manifest()) {
        match Manifest::from_json(Path::new("m.json"), &m.to_json()) {
            Ok(back) => {
                prop_assert_eq!(&back, &m);
                prop_assert_eq!(back.schema, 1);
                for f in &back.files {
                    prop_assert!(stays_inside(&f.path), "{:?} escapes", f.path);
                    prop_assert!(!f.path.contains('\\'));
                }
                prop_assert!(check_name("model", &back.model).is_ok());
                prop_assert!(check_name("version", &back.version).is_ok());
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn mutated_manifests_never_panic(m in manifest(),
                                     flips in prop::collection::vec((any::<prop::sample::Index>(), any::<char>()), 1..6)) {
        let mut text: Vec<char> = m.to_json().chars().collect();
        for (at, c) in flips {
            let i = at.index(text.len());
            text[i] = c;
        }
        let text: String = text.into_iter().collect();
        if let Ok(back) = Manifest::from_json(Path::new("m.json"), &text) {
            for f in &back.files {
                prop_assert!(stays_inside(&f.path), "{:?} escapes", f.path);
            }
        }
    }

    #[test]
    fn contained_paths_never_escape(path in tricky_path()) {
        if is_contained_relative(&path) {
            prop_assert!(stays_inside(&path), "{:?}", path);
            let root = Path::new("/models/m/1");
            prop_assert!(root.join(&path).starts_with(root));
        }
    }

    #[test]
    fn accepted_names_are_one_plain_component(name in tricky_path()) {
        if check_name("model", &name).is_ok() {
            prop_assert!(!name.contains('/') && !name.contains('\\') && !name.contains('\0'));
            prop_assert!(!name.starts_with('.') && name != "current");
            prop_assert_eq!(Path::new(&name).components().count(), 1);
        }
    }
}
