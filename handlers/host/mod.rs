//! The Functions host's custom-handler wire contract (see NOTES.md in the shared reference):
//! what an invocation request looks like, how to decode the Cosmos trigger's documents, and
//! the response shape. Pure data: no I/O.

mod request;
mod response;
mod unescape;

pub use request::{
    DecodeError, DocumentsError, HostRequest, RetryContext, RetryState, SysMetadata,
    decode_documents,
};
pub use response::InvocationResponse;

/// Header the host sets on every invocation.
pub const INVOCATION_ID_HEADER: &str = "x-azure-functions-invocationid";
/// Environment variable carrying the port the host will call.
pub const PORT_ENV: &str = "FUNCTIONS_CUSTOMHANDLER_PORT";
