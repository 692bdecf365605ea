//! Input readers: JSONL, gzip JSONL and Parquet, plain and conversational, and their errors.

use std::io::Write;
use std::path::{Path, PathBuf};

use lore_embed::{read_pairs, EmbedError, Location, Message, Text};

const PLAIN: &str = r#"{"user_id": "alice", "prompt": "p1", "chosen": "a", "rejected": "b", "pair_id": "x1"}

{"user_id": 42, "prompt": "p2", "chosen": "c", "rejected": "d", "pair_id": 7}
{"user_id": "alice", "prompt": "p1", "chosen": "b", "rejected": "e", "pair_id": "x3"}
"#;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn jsonl_plain_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let plain = write(dir.path(), "pairs.jsonl", PLAIN.as_bytes());
    // The gzip reader looks at the bytes, not the name.
    let gz = write(dir.path(), "pairs.data", &gzip(PLAIN));
    for path in [plain, gz] {
        let records = read_pairs(&path, None).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[1].user_id, "42");
        assert_eq!(records[1].pair_id.as_deref(), Some("7"));
        assert_eq!(records[1].at, Location::Line(3), "blank lines still count");
        assert_eq!(records[2].chosen, Text::Plain("b".into()));
        assert_eq!(read_pairs(&path, Some(2)).unwrap().len(), 2);
    }
}

#[test]
fn conversational_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let line = r#"{"user_id": "u", "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}], "rejected": "go away", "split": "train"}"#;
    let path = write(dir.path(), "conv.jsonl.gz", &gzip(line));
    let records = read_pairs(&path, None).unwrap();
    assert_eq!(
        records[0].prompt,
        Text::Messages(vec![
            Message::new("system", "be brief"),
            Message::new("user", "hi")
        ])
    );
    assert_eq!(records[0].prompt.to_plain(), "system: be brief\nuser: hi");
    assert_eq!(
        records[0].chosen,
        Text::Messages(vec![Message::new("assistant", "hello")])
    );
    assert_eq!(records[0].split.as_deref(), Some("train"));
}

fn error(path: &Path) -> String {
    let err = read_pairs(path, None).unwrap_err();
    let message = err.to_string();
    assert!(!message.contains('\n'), "one line: {message}");
    assert!(
        message.contains(&path.display().to_string()),
        "names the file: {message}"
    );
    message
}

#[test]
fn bad_inputs_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad_json = write(
        dir.path(),
        "bad.jsonl",
        b"{\"user_id\": \"u\", \"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"user_id\": \"u\", \"prompt\": \n",
    );
    let message = error(&bad_json);
    assert!(message.contains(": line 2: invalid JSON"), "{message}");

    let missing = write(
        dir.path(),
        "missing.jsonl",
        b"{\"user_id\": \"u\", \"prompt\": \"p\", \"chosen\": \"a\"}\n",
    );
    let message = error(&missing);
    assert!(
        message.ends_with(": line 1: missing column `rejected`"),
        "{message}"
    );

    let wrong = write(
        dir.path(),
        "wrong.jsonl",
        b"{\"user_id\": \"u\", \"prompt\": 3, \"chosen\": \"a\", \"rejected\": \"b\"}\n",
    );
    let message = error(&wrong);
    assert!(
        message.contains("column `prompt` must be a string or a list"),
        "{message}"
    );

    let not_utf8 = write(dir.path(), "latin1.jsonl", b"{\"user_id\": \"caf\xe9\"}\n");
    assert!(error(&not_utf8).contains("line 1: not valid UTF-8"));

    let truncated_gz = {
        let mut bytes = gzip(PLAIN);
        bytes.truncate(bytes.len() / 2);
        write(dir.path(), "cut.jsonl.gz", &bytes)
    };
    assert!(matches!(
        read_pairs(&truncated_gz, None),
        Err(EmbedError::Record { .. })
    ));

    let absent = dir.path().join("absent.jsonl");
    assert!(error(&absent).contains("cannot open"));
    let message = read_pairs(dir.path(), None).unwrap_err().to_string();
    assert!(message.contains("is a folder"), "{message}");
}

#[cfg(feature = "parquet")]
mod parquet_input {
    use super::*;
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    /// A Parquet file with an integer user id, a conversational prompt (list of
    /// {role, content}) and string responses, written column by column.
    fn write_parquet(path: &Path) {
        let schema = Arc::new(
            parse_message_type(
                "message pairs {
                    required int64 user_id;
                    required group prompt (LIST) {
                        repeated group list {
                            required group element {
                                required binary role (UTF8);
                                required binary content (UTF8);
                            }
                        }
                    }
                    required binary chosen (UTF8);
                    required binary rejected (UTF8);
                    optional binary split (UTF8);
                }",
            )
            .unwrap(),
        );
        let props = Arc::new(WriterProperties::builder().build());
        let file = std::fs::File::create(path).unwrap();
        let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
        let mut group = writer.next_row_group().unwrap();
        let bytes = |v: &[&str]| v.iter().map(|s| ByteArray::from(*s)).collect::<Vec<_>>();
        // Row 1: two prompt messages; row 2: one.
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<Int64Type>()
            .write_batch(&[5, 6], None, None)
            .unwrap();
        col.close().unwrap();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(
                &bytes(&["system", "user", "user"]),
                Some(&[1, 1, 1]),
                Some(&[0, 1, 0]),
            )
            .unwrap();
        col.close().unwrap();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(
                &bytes(&["be brief", "hi", "yo"]),
                Some(&[1, 1, 1]),
                Some(&[0, 1, 0]),
            )
            .unwrap();
        col.close().unwrap();
        for values in [["a", "c"], ["b", "d"]] {
            let mut col = group.next_column().unwrap().unwrap();
            col.typed::<ByteArrayType>()
                .write_batch(&bytes(&values), None, None)
                .unwrap();
            col.close().unwrap();
        }
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(&bytes(&["test"]), Some(&[1, 0]), None)
            .unwrap();
        col.close().unwrap();
        group.close().unwrap();
        writer.close().unwrap();
    }

    #[test]
    fn conversational_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairs.parquet");
        write_parquet(&path);
        let records = read_pairs(&path, None).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].user_id, "5");
        assert_eq!(
            records[0].prompt,
            Text::Messages(vec![
                Message::new("system", "be brief"),
                Message::new("user", "hi")
            ])
        );
        assert_eq!(
            records[1].prompt,
            Text::Messages(vec![Message::new("user", "yo")])
        );
        assert_eq!(records[1].rejected, Text::Plain("d".into()));
        assert_eq!(records[0].split.as_deref(), Some("test"));
        assert_eq!(records[1].split, None);
        assert_eq!(records[1].at, Location::Row(2));
        assert_eq!(read_pairs(&path, Some(1)).unwrap().len(), 1);
    }

    #[test]
    fn not_parquet_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "fake.parquet", b"PAR1 but not really");
        let message = error(&path);
        assert!(message.contains("not a readable Parquet file"), "{message}");
    }
}
