//! Fetch replies as a client decodes them, including zstd-compressed pages: no panic, and
//! decompression never produces more than the frame limit (no decompression bomb).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quaver_proto::codec::decompress_fetch_reply;
use quaver_proto::*;

fuzz_target!(|data: &[u8]| {
    if let Ok(reply) = decode::<FetchReply>(data) {
        let _ = decompress_fetch_reply(reply);
    }
});
