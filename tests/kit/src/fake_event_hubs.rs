//! A FAKE Azure Event Hubs AMQP endpoint, for tests and benchmarks: no emulator runs here, so
//! this speaks the protocol the real `azure_messaging_eventhubs` producer speaks (SASL
//! ANONYMOUS on plain TCP, the `$cbs` put-token exchange, `$management` READs, sender links to
//! the hub or a partition, batched transfers of message format 0x80013700) and records what
//! arrives. It answers as the service documents it: put-token 202, READ 200 with the
//! eventhub map, the link's max-message-size on attach (1 MB on Standard, 256 KB on Basic).
//! It is not Event Hubs: no partitions are stored, no offsets, no consumer side.
#![allow(dead_code)]

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle,
    ListenerSessionHandle, SaslAnonymousMechanism, SessionAcceptor,
};
use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::{Receiver, Sender};
use fe2o3_amqp_types::definitions::{self, AmqpError};
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::message::DecodeIntoMessage;
use fe2o3_amqp_types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties,
};
use fe2o3_amqp_types::primitives::{Array, OrderedMap, SimpleValue, Timestamp, Value};
use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub const BATCH_MESSAGE_FORMAT: u32 = 0x8001_3700;
type Reply = Message<AmqpValue<Value>>;

/// One event as it arrived.
#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    /// The link's target: `amqps://<namespace>/<hub>` (or `.../Partitions/<id>`).
    pub target: String,
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    /// The `x-opt-partition-key` message annotation.
    pub partition_key: Option<String>,
    pub properties: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// One transfer (a batch, or a single event).
#[derive(Debug, Clone)]
pub struct ReceivedTransfer {
    pub events: usize,
    /// The encoded size of the transfer's message, as the service measures it against the
    /// link's maximum message size.
    pub bytes: usize,
}

/// A put-token request on `$cbs`.
#[derive(Debug, Clone)]
pub struct PutToken {
    pub name: String,
    pub token_type: String,
    pub token: String,
}

#[derive(Default)]
pub struct Recorded {
    pub events: Vec<ReceivedEvent>,
    pub transfers: Vec<ReceivedTransfer>,
    pub put_tokens: Vec<PutToken>,
    pub management_reads: Vec<String>,
}

pub struct FakeEventHubs {
    pub event_hub: String,
    pub partition_ids: Vec<String>,
    pub max_message_size: u64,
    pub recorded: Mutex<Recorded>,
    /// While set, event transfers are refused with `com.microsoft:server-busy`.
    pub busy: AtomicBool,
    sockets: Mutex<Vec<std::net::TcpStream>>,
    listener_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    addr: Mutex<Option<SocketAddr>>,
}

impl FakeEventHubs {
    pub fn new(event_hub: &str, partitions: usize, max_message_size: u64) -> Arc<Self> {
        Arc::new(Self {
            event_hub: event_hub.into(),
            partition_ids: (0..partitions).map(|p| p.to_string()).collect(),
            max_message_size,
            recorded: Mutex::default(),
            busy: AtomicBool::new(false),
            sockets: Mutex::default(),
            listener_task: Mutex::default(),
            addr: Mutex::default(),
        })
    }

    /// Listens on 127.0.0.1 (a fresh port, or `port`); returns the `amqp://` endpoint.
    pub async fn start(self: &Arc<Self>, port: u16) -> std::io::Result<String> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        *self.addr.lock().unwrap() = Some(addr);
        let acceptor = Arc::new(
            ConnectionAcceptor::builder()
                .container_id("fake-event-hubs")
                .sasl_acceptor(SaslAnonymousMechanism::new())
                .build(),
        );
        let state = self.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let Ok(std_tcp) = tcp.into_std() else {
                    continue;
                };
                if let Ok(dup) = std_tcp.try_clone() {
                    state.sockets.lock().unwrap().push(dup);
                }
                let Ok(tcp) = TcpStream::from_std(std_tcp) else {
                    continue;
                };
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    if let Ok(conn) = acceptor.accept(tcp).await {
                        connection_main(conn, state).await;
                    }
                });
            }
        });
        *self.listener_task.lock().unwrap() = Some(task);
        Ok(format!("amqp://{addr}"))
    }

    pub fn port(&self) -> u16 {
        self.addr.lock().unwrap().expect("started").port()
    }

    /// Stops listening and cuts every connection without an AMQP close (a crashed or
    /// unreachable service).
    pub fn stop(&self) {
        if let Some(t) = self.listener_task.lock().unwrap().take() {
            t.abort();
        }
        self.drop_connections();
    }

    /// Cuts every open connection (TCP shutdown, no AMQP close frame).
    pub fn drop_connections(&self) {
        for s in self.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn events(&self) -> Vec<ReceivedEvent> {
        self.recorded.lock().unwrap().events.clone()
    }

    pub fn transfers(&self) -> Vec<ReceivedTransfer> {
        self.recorded.lock().unwrap().transfers.clone()
    }

    pub fn put_tokens(&self) -> Vec<PutToken> {
        self.recorded.lock().unwrap().put_tokens.clone()
    }

    pub fn management_reads(&self) -> Vec<String> {
        self.recorded.lock().unwrap().management_reads.clone()
    }
}

async fn connection_main(mut conn: ListenerConnectionHandle, state: Arc<FakeEventHubs>) {
    // Windows as large as the service's: fe2o3's default (2048 transfers) is not reopened,
    // and a long run would stall once it is used up.
    let sessions = SessionAcceptor::builder()
        .incoming_window(u32::MAX)
        .outgoing_window(u32::MAX)
        .build();
    // The client opens and ends sessions all the time (one per $cbs authorization): a session
    // that fails to begin must not stop the fake from accepting the next one.
    loop {
        match sessions.accept(&mut conn).await {
            Ok(session) => {
                tokio::spawn(session_main(session, state.clone()));
            }
            Err(fe2o3_amqp::session::BeginError::IllegalConnectionState) => break,
            Err(e) => eprintln!("fake-event-hubs: a session did not begin: {e}"),
        }
    }
    let _ = conn.on_close().await;
}

async fn session_main(mut session: ListenerSessionHandle, state: Arc<FakeEventHubs>) {
    let links = LinkAcceptor::builder()
        .max_message_size(state.max_message_size)
        .build();
    let replies = ReplyRouter::default();
    loop {
        let link = match links.accept(&mut session).await {
            Ok(link) => link,
            // The session ended: no more links on it.
            Err(fe2o3_amqp::acceptor::error::AcceptorAttachError::IllegalSessionState) => break,
            // One refused attach (e.g. a link detached while attaching) must not stop the
            // session from accepting the next link.
            Err(e) => {
                eprintln!("fake-event-hubs: an attach failed: {e:?}");
                continue;
            }
        };
        match link {
            // The client's sender: `$cbs`, `$management`, or the hub / a partition.
            LinkEndpoint::Receiver(rx) => {
                tokio::spawn(receiver_main(rx, replies.clone(), state.clone()));
            }
            // The client's receiver: where replies to `$cbs` / `$management` requests go.
            LinkEndpoint::Sender(tx) => {
                let address = tx
                    .target()
                    .as_ref()
                    .and_then(|t| t.address.clone())
                    .unwrap_or_default();
                if let Some(queue) = replies.take_receiver(&address) {
                    tokio::spawn(reply_sender_main(tx, queue));
                }
            }
        }
    }
    let _ = session.on_end().await;
}

type Slot = (
    mpsc::UnboundedSender<Reply>,
    Option<mpsc::UnboundedReceiver<Reply>>,
);

/// Per-session mailboxes keyed by reply address; whichever side comes first creates it.
#[derive(Clone, Default)]
struct ReplyRouter(Arc<Mutex<HashMap<String, Slot>>>);

impl ReplyRouter {
    fn with_slot<R>(&self, address: &str, f: impl FnOnce(&mut Slot) -> R) -> R {
        let mut slots = self.0.lock().unwrap();
        f(slots.entry(address.to_owned()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            (tx, Some(rx))
        }))
    }

    fn sender(&self, address: &str) -> mpsc::UnboundedSender<Reply> {
        self.with_slot(address, |s| s.0.clone())
    }

    fn take_receiver(&self, address: &str) -> Option<mpsc::UnboundedReceiver<Reply>> {
        self.with_slot(address, |s| s.1.take())
    }
}

async fn reply_sender_main(mut sender: Sender, mut queue: mpsc::UnboundedReceiver<Reply>) {
    while let Some(reply) = queue.recv().await {
        let sendable = Sendable {
            message: reply,
            message_format: 0,
            settled: Some(true),
        };
        if sender.send(sendable).await.is_err() {
            break;
        }
    }
    let _ = sender.close().await;
}

async fn receiver_main(mut receiver: Receiver, replies: ReplyRouter, state: Arc<FakeEventHubs>) {
    let target = receiver
        .target()
        .as_ref()
        .and_then(|t| t.address.clone())
        .unwrap_or_default();
    // Link credit handed out explicitly, in large grants: fe2o3's automatic credit renewal
    // was seen to stop after a few hundred deliveries under load, stalling the sender.
    const CREDIT: u32 = 10_000;
    receiver.set_credit_mode(fe2o3_amqp::link::receiver::CreditMode::Manual);
    if receiver.set_credit(CREDIT).await.is_err() {
        return;
    }
    let mut since_grant = 0u32;
    loop {
        if since_grant >= CREDIT / 2 {
            since_grant = 0;
            if receiver.set_credit(CREDIT).await.is_err() {
                return;
            }
        }
        since_grant += 1;
        let delivery = match receiver.recv::<Body<Value>>().await {
            Ok(d) => d,
            Err(_) => return,
        };
        if target == "$cbs" || target == "$management" {
            let _ = receiver.accept(&delivery).await;
            if let Some((reply_to, reply)) =
                handle_request(&target, delivery.into_message(), &state)
            {
                let _ = replies.sender(&reply_to).send(reply);
            }
            continue;
        }
        if state.busy.load(Ordering::SeqCst) {
            let error = definitions::Error::new(
                definitions::ErrorCondition::Custom(fe2o3_amqp_types::primitives::Symbol::from(
                    "com.microsoft:server-busy",
                )),
                Some("the fake is busy".to_string()),
                None,
            );
            let _ = receiver.reject(&delivery, error).await;
            continue;
        }
        let batch = *delivery.message_format() == Some(BATCH_MESSAGE_FORMAT);
        let bytes = serde_amqp::to_vec(
            &fe2o3_amqp_types::messaging::message::__private::Serializable(delivery.message()),
        )
        .map(|b| b.len())
        .unwrap_or_default();
        let events = extract_events(&target, delivery.message(), batch);
        {
            let mut rec = state.recorded.lock().unwrap();
            rec.transfers.push(ReceivedTransfer {
                events: events.len(),
                bytes,
            });
            rec.events.extend(events);
        }
        let _ = receiver.accept(&delivery).await;
    }
}

fn extract_events(target: &str, msg: &Message<Body<Value>>, batch: bool) -> Vec<ReceivedEvent> {
    if !batch {
        return vec![to_event(target, msg)];
    }
    let Body::Data(sections) = &msg.body else {
        return Vec::new();
    };
    sections
        .iter()
        .filter_map(|data| {
            let inner = <Body<Value> as DecodeIntoMessage>::decode_message_from_reader(
                serde_amqp::read::SliceReader::new(&data.0[..]),
            )
            .ok()?;
            Some(to_event(target, &inner))
        })
        .collect()
}

fn simple_to_string(v: &SimpleValue) -> String {
    match v {
        SimpleValue::String(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

fn to_event(target: &str, m: &Message<Body<Value>>) -> ReceivedEvent {
    let partition_key = m.message_annotations.as_ref().and_then(|ma| {
        ma.iter().find_map(|(k, v)| match (k, v) {
            (OwnedKey::Symbol(s), Value::String(pk)) if s.0 == "x-opt-partition-key" => {
                Some(pk.clone())
            }
            _ => None,
        })
    });
    let body = match &m.body {
        Body::Data(batch) => batch.iter().flat_map(|d| d.0.iter().copied()).collect(),
        other => format!("{other:?}").into_bytes(),
    };
    let message_id = m
        .properties
        .as_ref()
        .and_then(|p| p.message_id.as_ref())
        .map(|id| match id {
            MessageId::String(s) => s.clone(),
            other => format!("{other:?}"),
        });
    ReceivedEvent {
        target: target.to_string(),
        message_id,
        content_type: m
            .properties
            .as_ref()
            .and_then(|p| p.content_type.as_ref())
            .map(|c| c.0.clone()),
        partition_key,
        properties: m
            .application_properties
            .as_ref()
            .map(|ap| {
                ap.iter()
                    .map(|(k, v)| (k.clone(), simple_to_string(v)))
                    .collect()
            })
            .unwrap_or_default(),
        body,
    }
}

fn handle_request(
    node: &str,
    request: Message<Body<Value>>,
    state: &FakeEventHubs,
) -> Option<(String, Reply)> {
    let props = request.properties.as_ref()?;
    let reply_to = props.reply_to.clone()?;
    let correlation = props.message_id.clone();
    let app = request.application_properties.as_ref();
    let get = |k: &str| {
        app.and_then(|a| a.get(k)).and_then(|v| match v {
            SimpleValue::String(x) => Some(x.clone()),
            _ => None,
        })
    };
    let (code, description, body) = match (node, get("operation").as_deref()) {
        ("$cbs", Some("put-token")) => {
            let token = match &request.body {
                Body::Value(AmqpValue(Value::String(t))) => t.clone(),
                _ => String::new(),
            };
            state.recorded.lock().unwrap().put_tokens.push(PutToken {
                name: get("name").unwrap_or_default(),
                token_type: get("type").unwrap_or_default(),
                token,
            });
            (202, "Accepted", Value::Null)
        }
        ("$management", Some("READ")) => {
            let kind = get("type").unwrap_or_default();
            state
                .recorded
                .lock()
                .unwrap()
                .management_reads
                .push(kind.clone());
            if kind == "com.microsoft:eventhub" && get("name").as_deref() == Some(&state.event_hub)
            {
                (
                    200,
                    "OK",
                    string_map(vec![
                        ("name", Value::String(state.event_hub.clone())),
                        (
                            "created_at",
                            Value::Timestamp(Timestamp::from_milliseconds(1_700_000_000_000)),
                        ),
                        (
                            "partition_count",
                            Value::Int(state.partition_ids.len() as i32),
                        ),
                        (
                            "partition_ids",
                            Value::Array(Array::from(
                                state
                                    .partition_ids
                                    .iter()
                                    .cloned()
                                    .map(Value::String)
                                    .collect::<Vec<_>>(),
                            )),
                        ),
                    ]),
                )
            } else {
                (404, "no such entity", Value::Null)
            }
        }
        _ => (501, "not implemented by the fake", Value::Null),
    };
    let mut properties = Properties::builder();
    if let Some(id) = correlation {
        properties = properties.correlation_id(id);
    }
    let reply = Message::builder()
        .properties(properties.build())
        .application_properties(
            ApplicationProperties::builder()
                .insert("status-code", SimpleValue::Int(code))
                .insert(
                    "status-description",
                    SimpleValue::String(description.into()),
                )
                .build(),
        )
        .value(body)
        .build();
    Some((reply_to, reply))
}

fn string_map(entries: Vec<(&str, Value)>) -> Value {
    let mut m = OrderedMap::new();
    for (k, v) in entries {
        m.insert(Value::String(k.to_string()), v);
    }
    Value::Map(m)
}

/// The error the fake closes connections with (kept for symmetry with the service's).
pub fn internal_error() -> definitions::Error {
    definitions::Error::new(AmqpError::InternalError, Some("fake".to_string()), None)
}
