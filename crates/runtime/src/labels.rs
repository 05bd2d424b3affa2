//! Class labels: what Triton's classification extension appends to each class it answers
//! (`"<value>:<index>:<label>"`), read from a label file per output, as Triton reads the
//! `label_filename` of an output in `config.pbtxt`.
//!
//! kiln needs no configuration for them: an output's labels are the file
//! `labels/<output>.txt` beside the model ([`label_file`]), one label per line, line `i` naming class `i`
//! (Triton's format, so a Triton user's label file is copied in as it is). A label file is a
//! file of the version like any other: loaded only when its sha256 matches its pin (the
//! version's manifest, the caller's [`crate::ModelOptions::with_external_data_checksum`], or
//! the signature), read once, and swapped in and out with the version it came with. A file
//! there that nothing pins, or that names no output, fails the load: a label file that is
//! silently ignored (a typo in an output's name) would answer without labels, or with
//! unverified ones.
//!
//! Where Triton leaves it to the file's bytes, kiln decides: the file must be UTF-8 (labels
//! are answered as JSON text), a `\r` ending a line is not part of its label (a file saved on
//! Windows), and a file is at most [`MAX_LABEL_FILE_BYTES`]. As in Triton, an empty line, or
//! a class past the file's last line, has no label.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::checksum::{Checksum, Digest};
use crate::error::{Error, Result};
use crate::external::{pinned_digest, read_verified, real_parent, resolve_inside};
use crate::manifest::Manifest;

/// The directory, beside the model, that holds label files.
pub const LABELS_DIR: &str = "labels";

/// The largest label file read (ImageNet-21k's 21,843 labels are about 500 KiB).
pub const MAX_LABEL_FILE_BYTES: u64 = 16 << 20;

/// Class labels per output name (empty labels are `""`).
pub type Labels = BTreeMap<String, Arc<[String]>>;

/// The location, relative to the model's directory, of `output`'s label file:
/// `labels/<output>.txt`, with `%`, `/`, `\` and NUL in the name percent-encoded (`%25`,
/// `%2F`, `%5C`, `%00`) so that every output name, `save_infer_model/scale_0.tmp_1` too, is
/// one file name.
pub fn label_file(output: &str) -> String {
    let mut file = String::with_capacity(LABELS_DIR.len() + output.len() + 5);
    file.push_str(LABELS_DIR);
    file.push('/');
    for c in output.chars() {
        match c {
            '%' => file.push_str("%25"),
            '/' => file.push_str("%2F"),
            '\\' => file.push_str("%5C"),
            '\0' => file.push_str("%00"),
            c => file.push(c),
        }
    }
    file.push_str(".txt");
    file
}

/// Reads and verifies every label file of the model at `path`: those in its `labels/`
/// directory and those its pins or manifest list there. Returns each file's location and its
/// labels; [`check_outputs`] then matches them to the model's outputs.
///
/// # Errors
/// [`Error::InvalidLabels`] for a file that is not a label file or not UTF-8;
/// [`Error::ChecksumRequired`] for one nothing pins (unless [`Checksum::Skip`]);
/// [`Error::ChecksumMismatch`]; [`Error::Io`] for one that cannot be read or is over
/// [`MAX_LABEL_FILE_BYTES`].
pub(crate) fn load(
    path: &Path,
    checksum: &Checksum,
    pins: &BTreeMap<String, Digest>,
    manifest: Option<&Manifest>,
) -> Result<Vec<(String, Arc<[String]>)>> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = format!("{LABELS_DIR}/");
    let mut locations = std::collections::BTreeSet::new();
    locations.extend(pins.keys().filter(|l| l.starts_with(&prefix)).cloned());
    if let Some(m) = manifest {
        locations.extend(
            m.files
                .iter()
                .filter(|f| f.path.starts_with(&prefix))
                .map(|f| f.path.clone()),
        );
    }
    let labels_dir = dir.join(LABELS_DIR);
    match std::fs::read_dir(&labels_dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|source| Error::Io {
                    path: labels_dir.clone(),
                    source,
                })?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    return Err(invalid(
                        &entry.path(),
                        "a label file's name must be UTF-8 (labels/<output>.txt)".into(),
                    ));
                };
                locations.insert(format!("{prefix}{name}"));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Io {
                path: labels_dir,
                source,
            })
        }
    }
    if locations.is_empty() {
        return Ok(Vec::new());
    }
    let real_dir = real_parent(path)?;
    let mut found = Vec::with_capacity(locations.len());
    for location in locations {
        let file = dir.join(&location);
        let name = &location[prefix.len()..];
        if !name.ends_with(".txt") || name.contains(['/', '\\']) {
            return Err(invalid(
                &file,
                format!("{LABELS_DIR}/ holds only label files, named <output>.txt"),
            ));
        }
        let expected = pinned_digest(&file, &location, "label", checksum, pins, manifest)?;
        let real = resolve_inside(&file, &real_dir).map_err(|reason| invalid(&file, reason))?;
        if std::fs::metadata(&real).is_ok_and(|m| !m.is_file()) {
            return Err(invalid(&file, "not a regular file".into()));
        }
        let bytes = read_verified(&file, &real, expected, MAX_LABEL_FILE_BYTES)?;
        found.push((location, parse(&file, &bytes)?));
    }
    Ok(found)
}

/// `found`'s labels by output name, after checking that each file names one of `outputs`.
///
/// # Errors
/// [`Error::InvalidLabels`] for a label file of no output (the outputs listed).
pub(crate) fn check_outputs(
    path: &Path,
    found: Vec<(String, Arc<[String]>)>,
    outputs: &[&str],
) -> Result<Labels> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut labels = Labels::new();
    for (location, list) in found {
        let Some(output) = outputs.iter().find(|o| label_file(o) == location) else {
            return Err(invalid(
                &dir.join(&location),
                format!("names no output of the model; its outputs are {outputs:?}"),
            ));
        };
        labels.insert((*output).to_owned(), list);
    }
    Ok(labels)
}

/// The labels in a label file's bytes: one per line.
fn parse(file: &Path, bytes: &[u8]) -> Result<Arc<[String]>> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| invalid(file, format!("not UTF-8 text (byte {})", e.valid_up_to())))?;
    Ok(text
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned())
        .collect())
}

fn invalid(path: &Path, reason: String) -> Error {
    Error::InvalidLabels {
        path: path.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_output_name_is_one_file_name() {
        assert_eq!(label_file("probs"), "labels/probs.txt");
        assert_eq!(label_file("output:0"), "labels/output:0.txt");
        assert_eq!(
            label_file("save_infer_model/scale_0.tmp_1"),
            "labels/save_infer_model%2Fscale_0.tmp_1.txt"
        );
        assert_eq!(label_file("a%2Fb\\c\0"), "labels/a%252Fb%5Cc%00.txt");
        assert_eq!(label_file(".."), "labels/...txt");
    }

    #[test]
    fn lines_are_labels_as_triton_reads_them() {
        let f = Path::new("labels/p.txt");
        let l = parse(f, b"cat\r\ndog\n\nfish").expect("parses");
        assert_eq!(&*l, ["cat", "dog", "", "fish"]);
        assert_eq!(&*parse(f, b"a\n").expect("parses"), ["a"]);
        assert!(parse(f, b"").expect("parses").is_empty());
        let e = parse(f, b"ok\n\xff").expect_err("not UTF-8").to_string();
        assert!(e.contains("UTF-8") && e.contains("byte 3"), "{e}");
    }
}
