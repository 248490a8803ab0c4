#!/usr/bin/env python3
"""Seeds the fuzz corpora from the golden vectors (run from proto/)."""
import binascii
import json
import os

vectors = json.load(open("vectors/messages.json"))["messages"]
for d in ("frames", "fetch_reply"):
    os.makedirs(f"fuzz/corpus/{d}", exist_ok=True)
for i, m in enumerate(vectors):
    p = binascii.unhexlify(m["payload"])
    n = len(p)
    # QUIC varint length prefix (1 or 2 bytes is enough for the vectors).
    if n < 64:
        prefix = bytes([n])
    elif n < 16384:
        prefix = bytes([0x40 | (n >> 8), n & 0xFF])
    else:
        continue
    # frames: one chunk-size byte, then the framed message.
    open(f"fuzz/corpus/frames/v{i}", "wb").write(bytes([7]) + prefix + p)
    open(f"fuzz/corpus/fetch_reply/v{i}", "wb").write(p)
print(f"seeded {len(vectors)} vectors")
