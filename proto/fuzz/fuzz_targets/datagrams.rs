//! Voice datagram headers: parsing never panics, and what parses writes back to the same
//! bytes (uplink) or the same header (downlink).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quaver_proto::datagram::{Downlink, Uplink};

fuzz_target!(|data: &[u8]| {
    if let Ok((up, payload)) = Uplink::parse(data) {
        let mut out = Vec::new();
        up.write(payload, &mut out);
        assert_eq!(out, data);
    }
    if let Ok((down, payload)) = Downlink::parse(data) {
        let header = down.to_bytes();
        assert_eq!(&data[..header.len()], &header[..]);
        assert_eq!(&data[header.len()..], payload);
    }
});
