//! The changelog table's schema (a contract: see docs/changelog.md) and the encoding of
//! changes into an Arrow record batch (this sink's "request building").

use crate::change::Change;
use crate::sinks::BatchContext;
use chrono::{DateTime, NaiveDate, Utc};
use deltalake::arrow::array::{
    ArrayRef, Date32Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::kernel::{DataType, StructField};
use std::sync::{Arc, LazyLock};

/// The partition column: the UTC date of the change (`_ts`), or of ingestion when `_ts` is missing.
pub const PARTITION_COLUMN: &str = "change_date";

/// (name, delta type, nullable) in table order.
fn columns() -> [(&'static str, DataType, bool); 12] {
    [
        ("operation", DataType::STRING, false),
        ("delete_kind", DataType::STRING, true),
        ("id", DataType::STRING, false),
        ("partition_key", DataType::STRING, false),
        ("lsn", DataType::LONG, true),
        ("ts", DataType::LONG, true),
        ("etag", DataType::STRING, true),
        ("document", DataType::STRING, true),
        ("function", DataType::STRING, false),
        ("invocation_id", DataType::STRING, false),
        ("ingest_time", DataType::TIMESTAMP, false),
        (PARTITION_COLUMN, DataType::DATE, false),
    ]
}

pub fn delta_columns() -> Vec<StructField> {
    columns()
        .into_iter()
        .map(|(n, t, null)| StructField::new(n, t, null))
        .collect()
}

pub static ARROW_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields: Vec<Field> = columns()
        .into_iter()
        .map(|(name, t, nullable)| {
            let arrow = match t {
                t if t == DataType::STRING => ArrowType::Utf8,
                t if t == DataType::LONG => ArrowType::Int64,
                t if t == DataType::TIMESTAMP => {
                    ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
                }
                t if t == DataType::DATE => ArrowType::Date32,
                other => unreachable!("changelog column type {other:?} has no arrow mapping"),
            };
            Field::new(name, arrow, nullable)
        })
        .collect();
    Arc::new(Schema::new(fields))
});

fn epoch_days(date: NaiveDate) -> i32 {
    (date - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date")).num_days() as i32
}

/// Encodes changes as one record batch, in the given order.
pub fn encode(
    ctx: &BatchContext,
    changes: &[&Change],
    ingest_time: DateTime<Utc>,
) -> Result<RecordBatch, String> {
    let n = changes.len();
    let mut operation = StringBuilder::with_capacity(n, n * 8);
    let mut delete_kind = StringBuilder::with_capacity(n, n);
    let mut id = StringBuilder::with_capacity(n, n * 36);
    let mut partition_key = StringBuilder::with_capacity(n, n * 16);
    let mut lsn = Int64Builder::with_capacity(n);
    let mut ts = Int64Builder::with_capacity(n);
    let mut etag = StringBuilder::with_capacity(n, n * 40);
    let mut document = StringBuilder::with_capacity(n, n * 1024);
    let mut function = StringBuilder::with_capacity(n, n * ctx.function.len());
    let mut invocation = StringBuilder::with_capacity(n, n * ctx.invocation_id.len());
    let mut ingest = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut date = Date32Builder::with_capacity(n);
    let ingest_micros = ingest_time.timestamp_micros();
    let ingest_day = epoch_days(ingest_time.date_naive());
    let mut json = Vec::with_capacity(1024);
    for c in changes {
        operation.append_value(c.operation.as_str());
        delete_kind.append_option(c.delete_kind.map(|k| k.as_str()));
        id.append_value(&c.id);
        partition_key.append_value(c.partition_key.to_wire());
        lsn.append_option(c.lsn);
        ts.append_option(c.ts);
        etag.append_option(c.etag.as_deref());
        match &c.document {
            Some(doc) => {
                json.clear();
                serde_json::to_writer(&mut json, doc)
                    .map_err(|e| format!("document `{}`: {e}", c.id))?;
                // serde_json writes valid UTF-8.
                document.append_value(std::str::from_utf8(&json).expect("serde_json emits UTF-8"));
            }
            None => document.append_null(),
        }
        function.append_value(&ctx.function);
        invocation.append_value(&ctx.invocation_id);
        ingest.append_value(ingest_micros);
        let day =
            c.ts.and_then(|t| DateTime::from_timestamp(t, 0))
                .map(|t| epoch_days(t.date_naive()))
                .unwrap_or(ingest_day);
        date.append_value(day);
    }
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(operation.finish()),
        Arc::new(delete_kind.finish()),
        Arc::new(id.finish()),
        Arc::new(partition_key.finish()),
        Arc::new(lsn.finish()),
        Arc::new(ts.finish()),
        Arc::new(etag.finish()),
        Arc::new(document.finish()),
        Arc::new(function.finish()),
        Arc::new(invocation.finish()),
        Arc::new(ingest.finish()),
        Arc::new(date.finish()),
    ];
    RecordBatch::try_new(ARROW_SCHEMA.clone(), arrays).map_err(|e| e.to_string())
}
