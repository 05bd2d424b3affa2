//! Class labels: what Triton's classification extension appends to each class it answers
//! (`"<value>:<index>:<label>"`), read from a label file per output, as Triton reads the
//! `label_filename` of an output in `config.pbtxt`. (A scikit-learn classifier's ZipMap
//! output without a label file is labelled by its own classes, held as a file would be.)
//!
//! kiln needs no configuration for them: an output's labels are the file
//! `labels/<output>.txt` beside the model ([`label_file`]), one label per line, line `i`
//! naming class `i` (Triton's format, so a Triton user's label file is copied in as it is). A
//! label file is a file of the version like any other: loaded only when its sha256 matches its
//! pin (the version's manifest, the caller's [`crate::ModelOptions::with_external_data_checksum`],
//! or the signature), read once, and swapped in and out with the version it came with. A
//! `.txt` file there that nothing pins, or that names no output, fails the load: a label file
//! silently ignored (a typo in an output's name) would answer without labels, or with
//! unverified ones. Other files in `labels/` are not label files and are left alone, and so
//! are hidden ones (`._y.txt`, what macOS leaves beside a copy): an output whose name starts
//! with `.` has no label file.
//!
//! Where Triton leaves it to the file's bytes, kiln decides: the file must be UTF-8 (labels
//! are answered as JSON text; a leading byte-order mark is dropped), a `\r` ending a line is
//! not part of its label (a file saved on Windows), and a file holds at most
//! [`MAX_LABEL_FILE_BYTES`], [`MAX_LABELS`] labels and labels of at most [`MAX_LABEL_BYTES`].
//! As in Triton, an empty line, or a class past the file's last line, has no label.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::checksum::{Checksum, Digest};
use crate::error::{Error, Result};
use crate::external::{pinned_digest, read_verified, real_parent, resolve_inside};
use crate::layout::model_dir;
use crate::manifest::Manifest;

/// The directory, beside the model, that holds label files.
pub const LABELS_DIR: &str = "labels";

/// The largest label file read (ImageNet-21k's 21,843 labels are about 500 KiB).
pub const MAX_LABEL_FILE_BYTES: u64 = 16 << 20;

/// The most labels one file holds (as many as one classification answers at most).
pub const MAX_LABELS: usize = 1 << 20;

/// The longest label, in bytes: each class answered repeats its label.
pub const MAX_LABEL_BYTES: usize = 1024;

/// One output's class labels, kept as the file's text and where each label lies in it (a
/// label is not a `String` of its own: a file of a million short lines stays its size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassLabels {
    text: String,
    spans: Vec<(u32, u32)>,
    longest: usize,
    /// Read from the output's label file (not the model's own classes).
    from_file: bool,
}

impl ClassLabels {
    /// Class `index`'s label; `None` past the last, or for an empty line (Triton's rule: no
    /// label).
    pub fn get(&self, index: usize) -> Option<&str> {
        let &(start, end) = self.spans.get(index)?;
        let label = &self.text[start as usize..end as usize];
        (!label.is_empty()).then_some(label)
    }

    /// How many lines the file has.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether the file has no lines.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The longest label's length in bytes.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// Whether they were read from the output's label file ([`label_file`]); if not, they
    /// are the model's own classes (a classifier's ZipMap).
    pub fn from_file(&self) -> bool {
        self.from_file
    }
}

/// Class labels per output name.
pub type Labels = BTreeMap<String, Arc<ClassLabels>>;

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

/// The label files of the model at `path`, not yet read: the `.txt` files directly in its
/// `labels/` directory, and those its pins or manifest list there (each location relative to
/// the model's directory). Cheap; [`load`] reads them once the outputs are known.
///
/// # Errors
/// [`Error::Io`] for a `labels/` directory that cannot be listed; [`Error::InvalidLabels`]
/// for a label file's name that is not UTF-8.
pub(crate) fn find(
    path: &Path,
    pins: &BTreeMap<String, Digest>,
    manifest: Option<&Manifest>,
) -> Result<Vec<String>> {
    let is_label_file = |location: &str| {
        location
            .strip_prefix(LABELS_DIR)
            .and_then(|l| l.strip_prefix('/'))
            .is_some_and(|name| {
                name.ends_with(".txt") && !name.starts_with('.') && !name.contains(['/', '\\'])
            })
    };
    let mut found = std::collections::BTreeSet::new();
    found.extend(pins.keys().filter(|l| is_label_file(l)).cloned());
    if let Some(m) = manifest {
        found.extend(
            m.files
                .iter()
                .filter(|f| is_label_file(&f.path))
                .map(|f| f.path.clone()),
        );
    }
    let labels_dir = model_dir(path).join(LABELS_DIR);
    let entries = match std::fs::read_dir(&labels_dir) {
        Ok(entries) => entries,
        // No `labels/` directory (or a file of that name): no label files there.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(found.into_iter().collect())
        }
        Err(source) => {
            return Err(Error::Io {
                path: labels_dir,
                source,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: labels_dir.clone(),
            source,
        })?;
        let name = entry.file_name();
        let location = match name.to_str() {
            Some(name) => format!("{LABELS_DIR}/{name}"),
            None if name.as_encoded_bytes().ends_with(b".txt") => {
                return Err(invalid(
                    &entry.path(),
                    "a label file's name must be UTF-8 (labels/<output>.txt)".into(),
                ))
            }
            None => continue,
        };
        if is_label_file(&location) {
            found.insert(location);
        }
    }
    Ok(found.into_iter().collect())
}

/// Reads and verifies the label files `found` ([`find`]) of the model at `path`, whose outputs
/// are `outputs`: each must name one (checked before any is read), and is read once, checked
/// against its pin, and parsed.
///
/// # Errors
/// [`Error::InvalidLabels`] for a file that names no output, is too large, is not UTF-8, has
/// too many or too long labels, or is not a file; [`Error::ChecksumRequired`] for one nothing
/// pins (unless [`Checksum::Skip`]); [`Error::ChecksumMismatch`]; [`Error::Io`] for one that
/// cannot be read.
pub(crate) fn load(
    path: &Path,
    found: &[String],
    outputs: &[&str],
    checksum: &Checksum,
    pins: &BTreeMap<String, Digest>,
    manifest: Option<&Manifest>,
) -> Result<Labels> {
    let dir = model_dir(path);
    let mut named = Vec::with_capacity(found.len());
    for location in found {
        let Some(output) = outputs.iter().find(|o| label_file(o) == *location) else {
            return Err(invalid(
                &dir.join(location),
                format!(
                    "names no output of the model (its outputs are {outputs:?}); a label file is \
                     labels/<output>.txt: rename it, or move it out of labels/"
                ),
            ));
        };
        named.push((*output, location));
    }
    let mut labels = Labels::new();
    if named.is_empty() {
        return Ok(labels);
    }
    let real_dir = real_parent(path)?;
    for (output, location) in named {
        let file = dir.join(location);
        let expected = pinned_digest(&file, location, "label file", checksum, pins, manifest)?;
        let real = resolve_inside(&file, &real_dir).map_err(|reason| invalid(&file, reason))?;
        match std::fs::metadata(&real) {
            Ok(m) if !m.is_file() => return Err(invalid(&file, "not a regular file".into())),
            Ok(m) if m.len() > MAX_LABEL_FILE_BYTES => {
                return Err(invalid(
                    &file,
                    format!(
                        "{} bytes, over the limit of {MAX_LABEL_FILE_BYTES}",
                        m.len()
                    ),
                ))
            }
            _ => {}
        }
        let bytes = read_verified(&file, &real, expected, MAX_LABEL_FILE_BYTES)?;
        labels.insert((*output).to_owned(), Arc::new(parse(&file, &bytes)?));
    }
    Ok(labels)
}

/// Labels given as a list (a classifier's own classes, [`crate::zipmap::classes`]), held as a
/// label file would be: `None` where they could not be one (a class holding a line break,
/// over [`MAX_LABEL_BYTES`], or more than [`MAX_LABELS`] of them).
pub(crate) fn from_classes(classes: &[String]) -> Option<ClassLabels> {
    if classes.iter().any(|c| c.contains(['\n', '\r'])) {
        return None;
    }
    let text = classes.join("\n");
    if text.len() as u64 > MAX_LABEL_FILE_BYTES {
        return None;
    }
    let labels = parse(Path::new("classes"), text.as_bytes()).ok()?;
    Some(ClassLabels {
        from_file: false,
        ..labels
    })
}

/// The labels in a label file's bytes: one per line.
pub(crate) fn parse(file: &Path, bytes: &[u8]) -> Result<ClassLabels> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| invalid(file, format!("not UTF-8 text (byte {})", e.valid_up_to())))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut spans = Vec::new();
    let mut longest = 0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let label = line.strip_suffix('\n').unwrap_or(line);
        let label = label.strip_suffix('\r').unwrap_or(label);
        if spans.len() == MAX_LABELS {
            return Err(invalid(file, format!("more than {MAX_LABELS} labels")));
        }
        if label.len() > MAX_LABEL_BYTES {
            return Err(invalid(
                file,
                format!(
                    "label {} is {} bytes, over the limit of {MAX_LABEL_BYTES}",
                    spans.len(),
                    label.len()
                ),
            ));
        }
        longest = longest.max(label.len());
        // Within a file of at most MAX_LABEL_FILE_BYTES: offsets fit in u32.
        spans.push((at as u32, (at + label.len()) as u32));
        at += line.len();
    }
    Ok(ClassLabels {
        text: text.to_owned(),
        spans,
        longest,
        from_file: true,
    })
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
        fn all(l: &ClassLabels) -> Vec<Option<&str>> {
            (0..=l.len()).map(|i| l.get(i)).collect()
        }
        let l = parse(f, "\u{feff}cat\r\ndog\n\nfish".as_bytes()).expect("parses");
        assert_eq!(
            all(&l),
            [Some("cat"), Some("dog"), None, Some("fish"), None]
        );
        assert_eq!((l.len(), l.longest()), (4, 4));
        assert_eq!(all(&parse(f, b"a\n").expect("parses")), [Some("a"), None]);
        assert!(parse(f, b"").expect("parses").is_empty());
        let e = parse(f, b"ok\n\xff").expect_err("not UTF-8").to_string();
        assert!(e.contains("UTF-8") && e.contains("byte 3"), "{e}");
        let long = format!("ok\n{}\n", "x".repeat(MAX_LABEL_BYTES + 1));
        let e = parse(f, long.as_bytes()).expect_err("too long").to_string();
        assert!(e.contains("label 1 is 1025 bytes"), "{e}");
        let many = "\n".repeat(MAX_LABELS + 1);
        let e = parse(f, many.as_bytes()).expect_err("too many").to_string();
        assert!(e.contains("more than 1048576 labels"), "{e}");
        assert_eq!(
            parse(f, "\n".repeat(MAX_LABELS).as_bytes())
                .expect("at the limit")
                .len(),
            MAX_LABELS
        );
    }
}
