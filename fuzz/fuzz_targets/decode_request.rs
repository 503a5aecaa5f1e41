//! The host's request body, whatever bytes arrive: decoding returns a request or an error
//! (which the pipeline dead-letters), never a panic. Decoded items are then normalized.
#![no_main]

use fanout::change::{Normalizer, PartitionKeyPaths};
use fanout::host::HostRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(request) = HostRequest::decode(body, "documents") {
        let normalizer = Normalizer::new(
            PartitionKeyPaths::parse(&["/customerId"]).expect("valid path"),
            None,
        );
        for (index, item) in request.items.into_iter().enumerate() {
            let _ = normalizer.normalize(index, item);
        }
    }
});
