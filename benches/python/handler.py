"""The straightforward Python baseline of `fanout`, for side-by-side benchmarks.

An Azure Functions custom handler (aiohttp, plain asyncio, one process) implementing the same
design as the Rust handler for the `orders` Cosmos DB trigger: every batch of change-feed
documents is normalized into changes and fanned out, concurrently, to three sinks:

  * Redis: cache invalidation, one pipeline of `UNLINK order:{id}` per batch;
  * Delta Lake: one append (one commit) per batch to a local table partitioned by change_date;
  * Kafka: one structured CloudEvent per change, keyed by the partition key, and the answer
    waits until the broker acknowledged every record (acks=all, idempotent producer).

It answers 200 only when all three sinks succeeded, and 500 otherwise, so the Functions host
retries the whole batch (its retry policy), like the Rust handler.

What it deliberately does NOT do (it is the plain version a team would write first, not a
tuned or hardened one):
  * no dead-letter store: a batch that keeps failing is retried by the host and then lost;
  * no per-batch idempotence in Delta: a retried batch is appended again (duplicate rows);
  * no retries of its own beyond what deltalake (commit conflicts) and aiokafka do, plus a
    few re-tries of an append that still fails with a commit conflict;
  * no configurable sinks, field projection, batching limits, metrics or tracing.

Run from the app root with FUNCTIONS_CUSTOMHANDLER_PORT set (as the Functions host does) and
FANOUT_PY_REDIS_URL, FANOUT_PY_KAFKA_BROKERS, FANOUT_PY_KAFKA_TOPIC, FANOUT_PY_DELTA_TABLE.
FANOUT_PY_SINKS (default "redis,delta,kafka") picks the sinks of the route, so the benchmark
can compare the same routes as the Rust handler's (Redis only, Delta only, Redis + Delta).
FANOUT_PY_KAFKA_IDEMPOTENCE (default true) turns the idempotent producer off: aiokafka sends
InitProducerId v0 only, which the tansu 0.6 broker of the test suite refuses (librdkafka, in
the Rust handler, uses a newer version that tansu accepts). Against tansu, set it to false.
"""

import asyncio
import datetime as dt
import json
import os
import sys
import uuid

import pyarrow as pa
import redis.asyncio as aioredis
from aiohttp import web
from aiokafka import AIOKafkaProducer
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

FUNCTION = "orders"
PARTITION_KEY_PATH = "customerId"
EVENT_SOURCE = "/cosmosdb/orders/orders"
EVENT_TYPE_PREFIX = "com.example.orders"
SYSTEM_PROPERTIES = ("_rid", "_self", "_etag", "_attachments", "_ts", "_lsn")
DELTA_COMMIT_ATTEMPTS = 5

SCHEMA = pa.schema(
    [
        pa.field("operation", pa.string(), nullable=False),
        pa.field("delete_kind", pa.string()),
        pa.field("id", pa.string(), nullable=False),
        pa.field("partition_key", pa.string(), nullable=False),
        pa.field("lsn", pa.int64()),
        pa.field("ts", pa.int64()),
        pa.field("etag", pa.string()),
        pa.field("document", pa.string()),
        pa.field("function", pa.string(), nullable=False),
        pa.field("invocation_id", pa.string(), nullable=False),
        pa.field("ingest_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("change_date", pa.date32(), nullable=False),
    ]
)


def env(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"python handler: environment variable {name} is not set")
    return value


def compact(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --- the invocation body and the changes ------------------------------------------------------


def parse_documents(body):
    """`Data.documents` is a JSON string of a JSON string of the documents array."""
    docs = body["Data"]["documents"]
    while isinstance(docs, str):
        docs = json.loads(docs)
    if not isinstance(docs, list):
        raise ValueError("Data.documents is not an array of documents")
    return docs


def invocation_id(request, body):
    meta = body.get("Metadata") or {}
    sys_meta = meta.get("sys") or {}
    return (
        sys_meta.get("RandGuid")
        or meta.get("sys.RandGuid")
        or request.headers.get("x-azure-functions-invocationid")
        or str(uuid.uuid4())
    )


def normalize(doc):
    """One change-feed document (latest version mode) as a change, or None without an id."""
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
        return None
    deleted = doc.get("deleted") is True
    pk_value = doc.get(PARTITION_KEY_PATH)
    return {
        "operation": "delete" if deleted else "upsert",
        "delete_kind": "soft" if deleted else None,
        "id": doc["id"],
        "pk_value": pk_value,
        "partition_key": compact([pk_value]),  # wire form: ["customer-3"]
        "lsn": doc.get("_lsn"),
        "ts": doc.get("_ts"),
        "etag": doc.get("_etag"),
        "document": doc,
    }


def key_string(change):
    """The partition key as a plain string (Kafka key): the value itself when it is a string."""
    pk = change["pk_value"]
    return pk if isinstance(pk, str) else change["partition_key"]


# --- the sinks ----------------------------------------------------------------------------------


async def redis_sink(client, changes):
    pipe = client.pipeline(transaction=False)
    for c in changes:
        pipe.unlink(f"order:{c['id']}")
    await pipe.execute()


def delta_rows(changes, inv_id):
    now = dt.datetime.now(dt.timezone.utc)
    cols = {name: [] for name in SCHEMA.names}
    for c in changes:
        ts = c["ts"]
        when = dt.datetime.fromtimestamp(ts, dt.timezone.utc) if isinstance(ts, int) else now
        cols["operation"].append(c["operation"])
        cols["delete_kind"].append(c["delete_kind"])
        cols["id"].append(c["id"])
        cols["partition_key"].append(c["partition_key"])
        cols["lsn"].append(c["lsn"])
        cols["ts"].append(ts)
        cols["etag"].append(c["etag"])
        cols["document"].append(compact(c["document"]))
        cols["function"].append(FUNCTION)
        cols["invocation_id"].append(inv_id)
        cols["ingest_time"].append(now)
        cols["change_date"].append(when.date())
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def delta_append(table_uri, rows):
    # deltalake already retries an append that loses a commit race; re-try what still fails.
    for attempt in range(1, DELTA_COMMIT_ATTEMPTS + 1):
        try:
            write_deltalake(table_uri, rows, mode="append", partition_by=["change_date"])
            return
        except CommitFailedError:
            if attempt == DELTA_COMMIT_ATTEMPTS:
                raise


async def delta_sink(table_uri, changes, inv_id):
    rows = delta_rows(changes, inv_id)
    await asyncio.to_thread(delta_append, table_uri, rows)


def cloud_event(change):
    doc = change["document"]
    verb = "deleted" if change["operation"] == "delete" else "upserted"
    event = {
        "specversion": "1.0",
        "id": f"{FUNCTION}:{change['partition_key']}:{change['id']}:{change['lsn']}",
        "source": EVENT_SOURCE,
        "type": f"{EVENT_TYPE_PREFIX}.{verb}",
        "subject": change["id"],
        "datacontenttype": "application/json",
        "data": {k: v for k, v in doc.items() if k not in SYSTEM_PROPERTIES},
        "partitionkey": key_string(change),
        "cosmoslsn": change["lsn"],
    }
    if isinstance(change["ts"], int):
        event["time"] = dt.datetime.fromtimestamp(change["ts"], dt.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    return compact(event).encode()


async def kafka_sink(producer, topic, changes):
    headers = [("content-type", b"application/cloudevents+json")]
    deliveries = []
    for c in changes:
        # send() queues the record and returns its delivery future.
        deliveries.append(
            await producer.send(
                topic, value=cloud_event(c), key=key_string(c).encode(), headers=headers
            )
        )
    await asyncio.gather(*deliveries)


# --- the HTTP app -------------------------------------------------------------------------------


async def ready(request):
    return web.Response(text=f"python ready, pid {os.getpid()}")


async def orders(request):
    app = request.app
    logs = []
    try:
        body = await request.json()
        inv_id = invocation_id(request, body)
        changes = []
        for doc in parse_documents(body):
            change = normalize(doc)
            if change is None:
                logs.append("python orders: skipped a document without an id")
            else:
                changes.append(change)
        if changes:
            sinks = app["sinks"]
            await asyncio.gather(
                *(
                    [redis_sink(app["redis"], changes)] if "redis" in sinks else []
                ),
                *(
                    [delta_sink(app["delta_table"], changes, inv_id)]
                    if "delta" in sinks
                    else []
                ),
                *(
                    [kafka_sink(app["kafka"], app["kafka_topic"], changes)]
                    if "kafka" in sinks
                    else []
                ),
            )
        logs.append(f"python orders: {len(changes)} changes")
        return web.json_response({"Outputs": {}, "Logs": logs, "ReturnValue": None})
    except Exception as e:  # noqa: BLE001 - any failure means "retry the batch"
        logs.append(f"python orders failed: {type(e).__name__}: {e}")
        return web.json_response(
            {"Outputs": {}, "Logs": logs, "ReturnValue": None}, status=500
        )


async def start_clients(app):
    sinks = app["sinks"]
    if "redis" in sinks:
        app["redis"] = aioredis.from_url(app["redis_url"])
        await app["redis"].ping()
    if "delta" in sinks:
        # The table is created once here, so concurrent first appends do not race to create it.
        DeltaTable.create(
            app["delta_table"], SCHEMA, mode="ignore", partition_by=["change_date"]
        )
    if "kafka" not in sinks:
        yield
        if "redis" in sinks:
            await app["redis"].aclose()
        return
    producer = AIOKafkaProducer(
        bootstrap_servers=app["kafka_brokers"],
        enable_idempotence=app["kafka_idempotence"],
        acks="all",
        linger_ms=5,
    )
    try:
        await producer.start()
    except Exception as e:
        await producer.stop()
        hint = ""
        if app["kafka_idempotence"]:
            # aiokafka sends InitProducerId v0 only; some brokers (tansu 0.6) refuse that.
            hint = " (idempotent producer refused? set FANOUT_PY_KAFKA_IDEMPOTENCE=false)"
        sys.exit(f"python handler: Kafka producer did not start: {type(e).__name__}: {e}{hint}")
    app["kafka"] = producer
    yield
    await producer.stop()
    if "redis" in sinks:
        await app["redis"].aclose()


def main():
    port = int(env("FUNCTIONS_CUSTOMHANDLER_PORT"))
    app = web.Application(client_max_size=64 * 1024 * 1024)
    sinks = set(os.environ.get("FANOUT_PY_SINKS", "redis,delta,kafka").split(","))
    unknown = sinks - {"redis", "delta", "kafka"}
    if unknown or not sinks:
        sys.exit(f"python handler: FANOUT_PY_SINKS names unknown sinks {sorted(unknown)}")
    app["sinks"] = sinks
    if "redis" in sinks:
        app["redis_url"] = env("FANOUT_PY_REDIS_URL")
    if "kafka" in sinks:
        app["kafka_brokers"] = env("FANOUT_PY_KAFKA_BROKERS")
        app["kafka_topic"] = env("FANOUT_PY_KAFKA_TOPIC")
    if "delta" in sinks:
        app["delta_table"] = os.path.abspath(env("FANOUT_PY_DELTA_TABLE"))
    idempotence = os.environ.get("FANOUT_PY_KAFKA_IDEMPOTENCE", "true").lower()
    if idempotence not in ("true", "false"):
        sys.exit("python handler: FANOUT_PY_KAFKA_IDEMPOTENCE must be true or false")
    app["kafka_idempotence"] = idempotence == "true"
    app.cleanup_ctx.append(start_clients)
    app.router.add_get("/", ready)
    app.router.add_post("/orders", orders)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
