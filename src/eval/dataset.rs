//! Labelled pair files: the public paraphrase sets `semcache eval` scores against, each in the
//! layout its authors published, read into one shape ([`Pair`]).
//!
//! A pair file is refused as a whole at its first bad row (a missing key, a label that is not
//! 0/1, an empty or blank text), with the file, the row and the fault in the error: a silently
//! skipped row would change the denominators of every rate without anyone noticing, and the
//! published sets have no such rows.

use super::EvalError;
use serde_json::{Map, Value};
use std::fmt;
use std::path::Path;

/// One labelled pair: `a` is stored, `b` is looked up; `duplicate` says whether `b` should be
/// answered with `a`'s response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub a: String,
    pub b: String,
    pub duplicate: bool,
}

/// The published layouts. The container follows the file name (`.csv` is CSV with a header
/// row, anything else a JSON array of objects); the layout says which keys or columns hold the
/// two texts and the label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// GPTCache's Quora Question Pairs sample: {"text_a", "text_b", "label": 0|1}.
    #[value(name = "qqp")]
    Qqp,
    /// MeanCache's Quora split: CSV `question1,question2,is_duplicate`.
    #[value(name = "meancache")]
    MeanCache,
    /// GPTCache's benchmark: {"origin", "similar"}, every pair a duplicate.
    #[value(name = "mock")]
    Mock,
    /// MeanCache's follow-up questions: {"Main Query", "Follow-Up Query", ...}; a follow-up must
    /// never be answered with its main query's response, so no pair is a duplicate.
    #[value(name = "contextual")]
    Contextual,
}

/// Where the label of a pair comes from.
#[derive(Clone, Copy)]
enum Label {
    Key(&'static str),
    /// The whole set is of one kind.
    Always(bool),
}

struct Layout {
    a: &'static str,
    b: &'static str,
    label: Label,
}

impl Format {
    const ALL: [Format; 4] = [Format::Qqp, Format::MeanCache, Format::Mock, Format::Contextual];

    fn layout(self) -> Layout {
        match self {
            Format::Qqp => Layout { a: "text_a", b: "text_b", label: Label::Key("label") },
            Format::MeanCache => Layout { a: "question1", b: "question2", label: Label::Key("is_duplicate") },
            Format::Mock => Layout { a: "origin", b: "similar", label: Label::Always(true) },
            Format::Contextual => Layout { a: "Main Query", b: "Follow-Up Query", label: Label::Always(false) },
        }
    }

    /// The layout whose two text keys are both among `keys`. The label key is not needed to
    /// tell: a row without it is reported as such, which says more than "unknown format".
    fn detect<'k>(keys: impl Iterator<Item = &'k str> + Clone) -> Option<Format> {
        Format::ALL.into_iter().find(|f| {
            let layout = f.layout();
            let has = |key: &str| keys.clone().any(|k| k == key);
            has(layout.a) && has(layout.b)
        })
    }

    /// The name `--format` takes.
    fn name(self) -> &'static str {
        match self {
            Format::Qqp => "qqp",
            Format::MeanCache => "meancache",
            Format::Mock => "mock",
            Format::Contextual => "contextual",
        }
    }
}

/// Where in a file a row is, for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Index into the JSON array, from 0.
    Element(usize),
    /// Line of the CSV file, from 1, header included.
    Line(u64),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Element(i) => write!(f, "element {i} (counting from 0)"),
            Position::Line(n) => write!(f, "line {n}"),
        }
    }
}

/// Reads a pair file. Without `format` the layout is told from the header of a CSV file or the
/// keys of the first object of a JSON array. Refuses (rather than skips) any unusable row and
/// a file without pairs.
pub fn read_pairs(path: &Path, format: Option<Format>) -> Result<Vec<Pair>, EvalError> {
    let csv = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let pairs = if csv { read_csv(path, format)? } else { read_json(path, format)? };
    if pairs.is_empty() {
        return Err(file_error(path, "holds no pairs"));
    }
    Ok(pairs)
}

fn read_json(path: &Path, format: Option<Format>) -> Result<Vec<Pair>, EvalError> {
    let bytes = std::fs::read(path).map_err(|source| EvalError::Io { path: path.to_owned(), source })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| file_error(path, &format!("not valid JSON: {e}")))?;
    let Value::Array(rows) = value else {
        return Err(file_error(path, &format!("expected a JSON array of objects, found {}", kind(&value))));
    };
    let format = match (format, rows.first()) {
        (Some(format), _) => format,
        (None, None) => return Ok(Vec::new()),
        (None, Some(Value::Object(first))) => Format::detect(first.keys().map(String::as_str))
            .ok_or_else(|| unknown_layout(path, first.keys().map(String::as_str), "the first object's keys"))?,
        (None, Some(first)) => {
            return Err(row_error(path, Position::Element(0), &format!("expected an object, found {}", kind(first))))
        }
    };
    let layout = format.layout();
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| {
            let at = Position::Element(i);
            let Value::Object(mut row) = row else {
                return Err(row_error(path, at, &format!("expected an object, found {}", kind(&row))));
            };
            let a = json_text(path, at, &mut row, layout.a)?;
            let b = json_text(path, at, &mut row, layout.b)?;
            let duplicate = match layout.label {
                Label::Always(duplicate) => duplicate,
                Label::Key(key) => json_label(path, at, &row, key)?,
            };
            Ok(Pair { a, b, duplicate })
        })
        .collect()
}

fn json_text(path: &Path, at: Position, row: &mut Map<String, Value>, key: &str) -> Result<String, EvalError> {
    match row.remove(key) {
        None => Err(row_error(path, at, &format!("missing key {key:?}"))),
        Some(Value::String(text)) => checked_text(path, at, key, text),
        Some(other) => Err(row_error(path, at, &format!("{key:?} is {}, not a string", kind(&other)))),
    }
}

fn json_label(path: &Path, at: Position, row: &Map<String, Value>, key: &str) -> Result<bool, EvalError> {
    match row.get(key) {
        None => Err(row_error(path, at, &format!("missing key {key:?}"))),
        Some(Value::Bool(duplicate)) => Ok(*duplicate),
        Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(true),
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(false),
        Some(other) => Err(row_error(path, at, &format!("{key:?} is {other}, not 0 or 1"))),
    }
}

fn read_csv(path: &Path, format: Option<Format>) -> Result<Vec<Pair>, EvalError> {
    let mut reader = csv::ReaderBuilder::new().from_path(path).map_err(|e| csv_error(path, e))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| csv_error(path, e))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
        .collect();
    let format = match format {
        Some(format) => format,
        None => Format::detect(header.iter().map(String::as_str))
            .ok_or_else(|| unknown_layout(path, header.iter().map(String::as_str), "the header"))?,
    };
    let layout = format.layout();
    let column = |key: &str| {
        header
            .iter()
            .position(|h| h == key)
            .ok_or_else(|| file_error(path, &format!("the header ({}) has no column {key:?}", header.join(","))))
    };
    let (a_col, b_col) = (column(layout.a)?, column(layout.b)?);
    enum CsvLabel {
        Column(&'static str, usize),
        Always(bool),
    }
    let label = match layout.label {
        Label::Key(key) => CsvLabel::Column(key, column(key)?),
        Label::Always(duplicate) => CsvLabel::Always(duplicate),
    };

    let mut pairs = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let at = Position::Line(record.position().map_or(0, |p| p.line()));
        // The reader refuses records whose length differs from the header's, so every column
        // found in the header is there.
        let a = checked_text(path, at, layout.a, record[a_col].to_string())?;
        let b = checked_text(path, at, layout.b, record[b_col].to_string())?;
        let duplicate = match label {
            CsvLabel::Column(key, col) => match record[col].trim() {
                "1" => true,
                "0" => false,
                other => return Err(row_error(path, at, &format!("{key:?} is {other:?}, not 0 or 1"))),
            },
            CsvLabel::Always(duplicate) => duplicate,
        };
        pairs.push(Pair { a, b, duplicate });
    }
    Ok(pairs)
}

fn checked_text(path: &Path, at: Position, key: &str, text: String) -> Result<String, EvalError> {
    if text.trim().is_empty() {
        return Err(row_error(path, at, &format!("{key:?} is empty")));
    }
    Ok(text)
}

fn csv_error(path: &Path, error: csv::Error) -> EvalError {
    let at = error.position().map(|p| Position::Line(p.line()));
    let what = match error.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("{len} fields where the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { err, .. } => format!("not UTF-8 ({err})"),
        _ => error.to_string(),
    };
    match (error.into_kind(), at) {
        (csv::ErrorKind::Io(source), _) => EvalError::Io { path: path.to_owned(), source },
        (_, Some(at)) => row_error(path, at, &what),
        (_, None) => file_error(path, &what),
    }
}

fn unknown_layout<'k>(path: &Path, keys: impl Iterator<Item = &'k str>, found_in: &str) -> EvalError {
    let keys: Vec<String> = keys.map(|k| format!("{k:?}")).collect();
    let known: Vec<String> = Format::ALL
        .into_iter()
        .map(|f| {
            let layout = f.layout();
            let label = match layout.label {
                Label::Key(key) => format!(", {key:?}"),
                Label::Always(_) => String::new(),
            };
            format!("{:?}, {:?}{label} ({})", layout.a, layout.b, f.name())
        })
        .collect();
    file_error(
        path,
        &format!(
            "cannot tell the format from {found_in} ({}); expected one of: {}; or name it with --format",
            keys.join(", "),
            known.join("; ")
        ),
    )
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn file_error(path: &Path, what: &str) -> EvalError {
    EvalError::File { path: path.to_owned(), what: what.to_string() }
}

fn row_error(path: &Path, at: Position, what: &str) -> EvalError {
    EvalError::Row { path: path.to_owned(), at, what: what.to_string() }
}

/// A deterministic random subset of `n` pairs (all of them if there are no more than `n`), in
/// their original order, for `--limit`. The subset depends only on `seed` and the number of
/// pairs, and a smaller `n` picks a subset of a larger one with the same seed, so a quick run
/// on few pairs is a sample of the full run.
pub fn sample<T>(items: Vec<T>, n: usize, seed: u64) -> Vec<T> {
    let len = items.len();
    if n >= len {
        return items;
    }
    let mut order: Vec<usize> = (0..len).collect();
    crate::rng::shuffle(&mut order, seed);
    let mut keep = vec![false; len];
    for &i in &order[..n] {
        keep[i] = true;
    }
    items.into_iter().zip(keep).filter_map(|(item, keep)| keep.then_some(item)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(dir: &tempfile::TempDir, name: &str, content: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn pair(a: &str, b: &str, duplicate: bool) -> Pair {
        Pair { a: a.into(), b: b.into(), duplicate }
    }

    fn row_fault(result: Result<Vec<Pair>, EvalError>) -> (Position, String) {
        match result {
            Err(EvalError::Row { at, what, .. }) => (at, what),
            other => panic!("expected a row error, got {other:?}"),
        }
    }

    #[test]
    fn reads_qqp_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = fixture(
            &dir,
            "qqp.json",
            r#"[{"text_a": "How do I learn Rust?", "text_b": "Best way to learn Rust?", "label": 1},
                {"text_a": "What is 2+2?", "text_b": "What is 2+3?", "label": 0}]"#,
        );
        let expected = vec![
            pair("How do I learn Rust?", "Best way to learn Rust?", true),
            pair("What is 2+2?", "What is 2+3?", false),
        ];
        assert_eq!(read_pairs(&path, None).unwrap(), expected);
        assert_eq!(read_pairs(&path, Some(Format::Qqp)).unwrap(), expected);
    }

    #[test]
    fn reads_meancache_csv_with_rfc4180_quoting() {
        let dir = tempfile::tempdir().unwrap();
        let path = fixture(
            &dir,
            "test.csv",
            "question1,question2,is_duplicate\n\
             \"If you could live anywhere, where?\",\"Say \"\"where\"\"\nand why\",1\n\
             plain one,plain two,0\n",
        );
        assert_eq!(
            read_pairs(&path, None).unwrap(),
            vec![
                pair("If you could live anywhere, where?", "Say \"where\"\nand why", true),
                pair("plain one", "plain two", false)
            ]
        );
    }

    #[test]
    fn reads_mock_as_all_duplicates_and_contextual_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let mock =
            fixture(&dir, "mock.json", r#"[{"origin": "Hub hosts models.", "similar": "The Hub stores models."}]"#);
        assert_eq!(read_pairs(&mock, None).unwrap(), vec![pair("Hub hosts models.", "The Hub stores models.", true)]);
        let contextual = fixture(
            &dir,
            "ctx.json",
            r#"[{"Main Query": "What are derivatives?", "Main Query Response": "Contracts...",
                 "Follow-Up Query": "How are they used in finance?", "Follow Up Query Response": "Hedging."}]"#,
        );
        assert_eq!(
            read_pairs(&contextual, None).unwrap(),
            vec![pair("What are derivatives?", "How are they used in finance?", false)]
        );
    }

    #[test]
    fn csv_header_and_bom_are_tolerated_and_layout_can_be_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = fixture(&dir, "x.csv", "\u{feff}is_duplicate,question2,question1\n1,b,a\n");
        assert_eq!(read_pairs(&path, None).unwrap(), vec![pair("a", "b", true)]);
        assert_eq!(read_pairs(&path, Some(Format::MeanCache)).unwrap(), vec![pair("a", "b", true)]);
    }

    #[test]
    fn a_named_format_overrides_detection() {
        let dir = tempfile::tempdir().unwrap();
        let path = fixture(&dir, "qqp.json", r#"[{"text_a": "a", "text_b": "b", "label": 1}]"#);
        let (at, what) = row_fault(read_pairs(&path, Some(Format::Mock)));
        assert_eq!(at, Position::Element(0));
        assert_eq!(what, r#"missing key "origin""#);
    }

    #[test]
    fn json_row_errors_name_the_file_the_element_and_the_fault() {
        let dir = tempfile::tempdir().unwrap();
        let ok = r#"{"text_a": "a", "text_b": "b", "label": 1}"#;
        let cases = [
            (r#"{"text_a": "a", "label": 1}"#, r#"missing key "text_b""#),
            (r#"{"text_a": "a", "text_b": "b", "label": 2}"#, r#""label" is 2, not 0 or 1"#),
            (r#"{"text_a": "a", "text_b": "b", "label": "1"}"#, r#""label" is "1", not 0 or 1"#),
            (r#"{"text_a": "a", "text_b": "b"}"#, r#"missing key "label""#),
            (r#"{"text_a": " \t", "text_b": "b", "label": 1}"#, r#""text_a" is empty"#),
            (r#"{"text_a": "a", "text_b": 7, "label": 1}"#, r#""text_b" is a number, not a string"#),
            (r#"["a", "b", 1]"#, "expected an object, found an array"),
        ];
        for (bad, fault) in cases {
            let path = fixture(&dir, "bad.json", &format!("[{ok}, {ok}, {bad}]"));
            let error = read_pairs(&path, None).unwrap_err();
            let message = error.to_string();
            assert!(message.starts_with(&path.display().to_string()), "{message}");
            assert_eq!(row_fault(Err(error)), (Position::Element(2), fault.to_string()));
            assert!(message.ends_with(&format!("element 2 (counting from 0): {fault}")), "{message}");
        }
    }

    #[test]
    fn csv_row_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let header = "question1,question2,is_duplicate\n";
        let cases = [
            ("a,b,1\nc,d,yes\n", Position::Line(3), r#""is_duplicate" is "yes", not 0 or 1"#),
            ("a,b,1\n\"multi\nline\",d,1\ne, ,0\n", Position::Line(5), r#""question2" is empty"#),
            ("a,b,1\nc,d\n", Position::Line(3), "2 fields where the header has 3"),
        ];
        for (rows, line, fault) in cases {
            let path = fixture(&dir, "bad.csv", &format!("{header}{rows}"));
            assert_eq!(row_fault(read_pairs(&path, None)), (line, fault.to_string()));
        }
    }

    #[test]
    fn unusable_files_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file_fault = |path: &Path, format| match read_pairs(path, format) {
            Err(EvalError::File { what, .. }) => what,
            other => panic!("expected a file error, got {other:?}"),
        };
        let empty = fixture(&dir, "empty.json", "[]");
        assert_eq!(file_fault(&empty, None), "holds no pairs");
        let header_only = fixture(&dir, "empty.csv", "question1,question2,is_duplicate\n");
        assert_eq!(file_fault(&header_only, None), "holds no pairs");
        let object = fixture(&dir, "object.json", r#"{"text_a": "a"}"#);
        assert_eq!(file_fault(&object, None), "expected a JSON array of objects, found an object");
        let broken = fixture(&dir, "broken.json", "[{");
        assert!(file_fault(&broken, None).starts_with("not valid JSON"));
        let unknown = fixture(&dir, "unknown.json", r#"[{"q": "a", "r": "b"}]"#);
        let what = file_fault(&unknown, None);
        assert!(what.starts_with(r#"cannot tell the format from the first object's keys ("q", "r")"#), "{what}");
        assert!(what.contains(r#""Main Query", "Follow-Up Query" (contextual)"#), "{what}");
        let wrong_columns = fixture(&dir, "other.csv", "q1,q2,dup\na,b,1\n");
        assert!(file_fault(&wrong_columns, None).starts_with("cannot tell the format from the header"));
        assert_eq!(
            file_fault(&wrong_columns, Some(Format::MeanCache)),
            r#"the header (q1,q2,dup) has no column "question1""#
        );
        let missing = dir.path().join("missing.json");
        assert!(matches!(read_pairs(&missing, None), Err(EvalError::Io { .. })));
        assert!(matches!(read_pairs(&dir.path().join("missing.csv"), None), Err(EvalError::Io { .. })));
    }

    fn numbered(n: usize) -> Vec<Pair> {
        (0..n).map(|i| pair(&format!("a{i}"), &format!("b{i}"), i % 2 == 0)).collect()
    }

    #[test]
    fn sample_is_a_deterministic_ordered_subset() {
        let all = numbered(1000);
        let picked = sample(all.clone(), 100, 7);
        assert_eq!(picked.len(), 100);
        assert_eq!(picked, sample(all.clone(), 100, 7), "same seed, same sample");
        assert_ne!(picked, sample(all.clone(), 100, 8), "another seed, another sample");
        let index = |p: &Pair| all.iter().position(|q| q == p).unwrap();
        let indices: Vec<usize> = picked.iter().map(index).collect();
        assert!(indices.windows(2).all(|w| w[0] < w[1]), "original order kept: {indices:?}");
        assert_ne!(indices, (0..100).collect::<Vec<_>>(), "not just the first n");
        // Spread over the whole file, not bunched at one end.
        assert!(indices[0] < 100 && indices[99] > 900, "{indices:?}");
    }

    #[test]
    fn a_smaller_sample_is_part_of_a_larger_one() {
        let all = numbered(500);
        let small = sample(all.clone(), 50, 42);
        let large = sample(all, 200, 42);
        assert!(small.iter().all(|p| large.contains(p)));
    }

    #[test]
    fn a_seed_picks_the_same_pairs_in_every_version() {
        // A result reported with `--limit N --seed S` must be reproducible by later builds:
        // these are the picks of the generator that `sample` first shipped with.
        let all = numbered(1000);
        let picked: Vec<usize> =
            sample(all.clone(), 5, 7).iter().map(|p| all.iter().position(|q| q == p).unwrap()).collect();
        assert_eq!(picked, [17, 389, 454, 584, 900]);
    }

    #[test]
    fn sample_of_at_least_the_whole_set_is_the_set() {
        assert_eq!(sample(numbered(10), 10, 1), numbered(10));
        assert_eq!(sample(numbered(10), 50, 1), numbered(10));
        assert!(sample(numbered(10), 0, 1).is_empty());
    }
}
