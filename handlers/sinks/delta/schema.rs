//! The changelog table's schema (a contract: see docs/changelog.md) and the encoding of
//! changes into an Arrow record batch (this sink's "request building").
//!
//! Twelve fixed columns, then the typed columns the config projects from the document. A
//! batch is encoded in this sink's own column order; `conform` maps it onto the table's
//! schema at commit time (the table may hold columns other writers added).

use super::config::{ColumnType, TypedColumn};
use super::error;
use crate::change::Change;
use crate::change::DocPath;
use crate::change::projection::lookup;
use crate::sinks::BatchContext;
use crate::sinks::SinkError;
use chrono::{DateTime, NaiveDate, Utc};
use deltalake::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder, new_null_array,
};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::kernel::{DataType, StructField};
use serde_json::Value;
use std::sync::{Arc, LazyLock};

/// The partition column: the UTC date of the change (`_ts`), or of ingestion when `_ts` is missing.
pub const PARTITION_COLUMN: &str = "change_date";

/// The fixed columns' names, in table order.
pub const FIXED_COLUMN_NAMES: [&str; 12] = [
    "operation",
    "delete_kind",
    "id",
    "partition_key",
    "lsn",
    "ts",
    "etag",
    "document",
    "function",
    "invocation_id",
    "ingest_time",
    PARTITION_COLUMN,
];

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

fn arrow_type(t: &DataType) -> ArrowType {
    match t {
        t if *t == DataType::STRING => ArrowType::Utf8,
        t if *t == DataType::LONG => ArrowType::Int64,
        t if *t == DataType::DOUBLE => ArrowType::Float64,
        t if *t == DataType::BOOLEAN => ArrowType::Boolean,
        t if *t == DataType::TIMESTAMP => {
            ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        }
        t if *t == DataType::DATE => ArrowType::Date32,
        other => unreachable!("changelog column type {other:?} has no arrow mapping"),
    }
}

impl ColumnType {
    pub fn delta_type(self) -> DataType {
        match self {
            ColumnType::String => DataType::STRING,
            ColumnType::Long => DataType::LONG,
            ColumnType::Double => DataType::DOUBLE,
            ColumnType::Boolean => DataType::BOOLEAN,
            ColumnType::Timestamp => DataType::TIMESTAMP,
            ColumnType::Date => DataType::DATE,
        }
    }
}

/// The fixed columns only (tables written without typed columns).
pub static ARROW_SCHEMA: LazyLock<SchemaRef> =
    LazyLock::new(|| ChangelogSchema::new(&[]).arrow().clone());

/// The columns this sink writes: the fixed ones, then the configured typed columns.
#[derive(Debug, Clone)]
pub struct ChangelogSchema {
    typed: Vec<(TypedColumn, Vec<String>)>,
    arrow: SchemaRef,
}

impl ChangelogSchema {
    pub fn new(typed: &[TypedColumn]) -> Self {
        let fields: Vec<Field> = columns()
            .into_iter()
            .map(|(name, t, nullable)| Field::new(name, arrow_type(&t), nullable))
            .chain(
                typed
                    .iter()
                    .map(|c| Field::new(&c.name, arrow_type(&c.kind.delta_type()), true)),
            )
            .collect();
        Self {
            typed: typed
                .iter()
                .map(|c| {
                    // Checked by the config's validation.
                    let path = DocPath::parse(&c.path).map(|p| p.segments().to_vec());
                    (c.clone(), path.unwrap_or_default())
                })
                .collect(),
            arrow: Arc::new(Schema::new(fields)),
        }
    }

    pub fn arrow(&self) -> &SchemaRef {
        &self.arrow
    }

    /// Every column, for creating the table.
    pub fn delta_columns(&self) -> Vec<StructField> {
        columns()
            .into_iter()
            .map(|(n, t, null)| StructField::new(n, t, null))
            .chain(self.typed_fields())
            .collect()
    }

    /// The typed columns (always nullable: old rows and documents without the field have none).
    pub fn typed_fields(&self) -> Vec<StructField> {
        self.typed
            .iter()
            .map(|(c, _)| StructField::new(&c.name, c.kind.delta_type(), true))
            .collect()
    }

    /// Encodes changes as one record batch, in the given order.
    pub fn encode(
        &self,
        ctx: &BatchContext,
        changes: &[&Change],
        ingest_time: DateTime<Utc>,
    ) -> Result<RecordBatch, EncodeError> {
        let mut arrays = encode_fixed(ctx, changes, ingest_time)?;
        let docs: Vec<Option<&serde_json::Map<String, Value>>> =
            changes.iter().map(|c| c.document.as_ref()).collect();
        arrays.extend(self.typed_arrays(&docs));
        Ok(RecordBatch::try_new(self.arrow.clone(), arrays)?)
    }

    /// The typed columns of these documents (a state table has the same ones).
    pub fn typed_arrays(&self, docs: &[Option<&serde_json::Map<String, Value>>]) -> Vec<ArrayRef> {
        self.typed
            .iter()
            .map(|(column, path)| project(column.kind, path, docs))
            .collect()
    }

    /// The typed columns as Arrow fields.
    pub fn typed_arrow_fields(&self) -> Vec<Field> {
        self.typed
            .iter()
            .map(|(c, _)| Field::new(&c.name, arrow_type(&c.kind.delta_type()), true))
            .collect()
    }
}

/// Why changes could not become rows of the table (permanent: the data or the settings).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("{0}")]
    Arrow(#[from] deltalake::arrow::error::ArrowError),
    #[error("document `{id}`: {source}")]
    Document {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "column `{column}` is {table} in the table but {ours} in this sink's config: pick another column name"
    )]
    ColumnType {
        column: String,
        table: String,
        ours: String,
    },
    #[error("the table requires column `{0}`, which this sink does not write")]
    MissingColumn(String),
}

impl From<EncodeError> for SinkError {
    fn from(e: EncodeError) -> Self {
        let message = format!("delta: {e}");
        SinkError::permanent(message).with_source(e)
    }
}

/// The table's current schema, as Arrow (it may hold columns other writers added).
pub fn table_arrow_schema(table: &deltalake::DeltaTable) -> Result<SchemaRef, SinkError> {
    use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
    let schema: Schema = table
        .snapshot()?
        .schema()
        .as_ref()
        .try_into_arrow()
        .map_err(|e: deltalake::arrow::error::ArrowError| {
            error::permanent(format!("table schema: {e}"))
        })?;
    Ok(Arc::new(schema))
}

/// Maps a batch onto the table's schema by column name: the table's order, and nulls for
/// (nullable) columns the batch does not have. Fails if a column's type differs.
pub fn conform(batch: &RecordBatch, table: &SchemaRef) -> Result<RecordBatch, EncodeError> {
    if batch.schema() == *table {
        return Ok(batch.clone());
    }
    let mut arrays = Vec::with_capacity(table.fields().len());
    for field in table.fields() {
        match batch.column_by_name(field.name()) {
            Some(array) if array.data_type() == field.data_type() => arrays.push(array.clone()),
            Some(array) => {
                return Err(EncodeError::ColumnType {
                    column: field.name().clone(),
                    table: field.data_type().to_string(),
                    ours: array.data_type().to_string(),
                });
            }
            None if field.is_nullable() => {
                arrays.push(new_null_array(field.data_type(), batch.num_rows()))
            }
            None => {
                return Err(EncodeError::MissingColumn(field.name().clone()));
            }
        }
    }
    Ok(RecordBatch::try_new(table.clone(), arrays)?)
}

/// One typed column. A value that does not fit the type is written as null (the `document`
/// column keeps the original): the changelog never drops a change over a projection.
fn project(
    kind: ColumnType,
    path: &[String],
    docs: &[Option<&serde_json::Map<String, Value>>],
) -> ArrayRef {
    let changes = docs;
    let values = docs
        .iter()
        .map(|d| d.and_then(|d| lookup(d, path)).filter(|v| !v.is_null()));
    match kind {
        ColumnType::String => {
            let mut b = StringBuilder::with_capacity(changes.len(), changes.len() * 16);
            for v in values {
                match v {
                    Some(Value::String(s)) => b.append_value(s),
                    Some(other) => b.append_value(other.to_string()),
                    None => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::Long => {
            let mut b = Int64Builder::with_capacity(changes.len());
            for v in values {
                b.append_option(v.and_then(|v| {
                    v.as_i64().or_else(|| {
                        v.as_f64()
                            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                            .map(|f| f as i64)
                    })
                }));
            }
            Arc::new(b.finish())
        }
        ColumnType::Double => {
            let mut b = Float64Builder::with_capacity(changes.len());
            for v in values {
                b.append_option(v.and_then(Value::as_f64));
            }
            Arc::new(b.finish())
        }
        ColumnType::Boolean => {
            let mut b = BooleanBuilder::with_capacity(changes.len());
            for v in values {
                b.append_option(v.and_then(Value::as_bool));
            }
            Arc::new(b.finish())
        }
        ColumnType::Timestamp => {
            let mut b =
                TimestampMicrosecondBuilder::with_capacity(changes.len()).with_timezone("UTC");
            for v in values {
                b.append_option(v.and_then(timestamp).map(|t| t.timestamp_micros()));
            }
            Arc::new(b.finish())
        }
        ColumnType::Date => {
            let mut b = Date32Builder::with_capacity(changes.len());
            for v in values {
                b.append_option(v.and_then(|v| {
                    match v {
                        Value::String(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
                            .ok()
                            .or_else(|| timestamp(v).map(|t| t.date_naive()))
                            .map(epoch_days),
                        _ => timestamp(v).map(|t| epoch_days(t.date_naive())),
                    }
                }));
            }
            Arc::new(b.finish())
        }
    }
}

/// RFC 3339 text, or epoch seconds.
fn timestamp(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        Value::Number(n) => n.as_i64().and_then(|s| DateTime::from_timestamp(s, 0)),
        _ => None,
    }
}

fn epoch_days(date: NaiveDate) -> i32 {
    (date - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date")).num_days() as i32
}

/// Encodes changes with the fixed columns only, in the given order.
pub fn encode(
    ctx: &BatchContext,
    changes: &[&Change],
    ingest_time: DateTime<Utc>,
) -> Result<RecordBatch, EncodeError> {
    Ok(RecordBatch::try_new(
        ARROW_SCHEMA.clone(),
        encode_fixed(ctx, changes, ingest_time)?,
    )?)
}

fn encode_fixed(
    ctx: &BatchContext,
    changes: &[&Change],
    ingest_time: DateTime<Utc>,
) -> Result<Vec<ArrayRef>, EncodeError> {
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
                serde_json::to_writer(&mut json, doc).map_err(|source| EncodeError::Document {
                    id: c.id.clone(),
                    source,
                })?;
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
    Ok(arrays)
}
