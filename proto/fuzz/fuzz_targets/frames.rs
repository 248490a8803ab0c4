//! A byte stream as a peer could send it on any stream: split into frames by the frame
//! reader (fed in chunks whose sizes the input chooses), each frame decoded as every
//! message type a peer can send or receive. Nothing may panic, and the reader may never
//! hold more than one maximal frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quaver_proto::codec::FrameReader;
use quaver_proto::*;

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut reader = FrameReader::new(MAX);
    for piece in stream.chunks(chunk) {
        reader.push(piece);
        loop {
            match reader.next_frame() {
                Ok(Some(p)) => {
                    assert!(p.len() <= MAX);
                    let _ = decode::<ClientControl>(&p);
                    let _ = decode::<ServerControl>(&p);
                    let _ = decode::<StreamOpen>(&p);
                    let _ = decode::<Request>(&p);
                    let _ = decode::<ServerLane>(&p);
                    let _ = decode::<FetchRequest>(&p);
                    let _ = decode::<FetchReply>(&p);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(reader.buffered() <= MAX + 8 + chunk);
    }
    let _ = reader.finish();
});
