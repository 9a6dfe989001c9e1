//! Frame codec micro benchmarks: encode and decode of request and response frames with
//! payloads of 100 B, 4 KiB and 64 KiB (`cargo bench --bench frame`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nano_connect::protocol::frame::{self, RequestFrame, ResponseFrame, PROTOCOL_VERSION};

/// Limit passed to the codec: above every payload measured.
const LIMIT: usize = 8 * 1024 * 1024;

const SIZES: [(&str, usize); 3] = [("100B", 100), ("4KiB", 4 * 1024), ("64KiB", 64 * 1024)];

fn request(size: usize) -> RequestFrame {
    RequestFrame {
        v: PROTOCOL_VERSION,
        id: 12_345,
        key: "nano_rpc".into(),
        body: vec![b'x'; size],
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for (name, size) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let req = request(size);
        let resp = ResponseFrame::answer(12_345, 200, vec![b'y'; size]);
        group.bench_with_input(BenchmarkId::new("encode_request", name), &req, |b, r| {
            b.iter(|| frame::encode(r, LIMIT).expect("encodes"))
        });
        let req_bytes = frame::encode(&req, LIMIT).expect("encodes");
        group.bench_with_input(
            BenchmarkId::new("decode_request", name),
            &req_bytes,
            |b, bytes| b.iter(|| frame::decode::<RequestFrame>(bytes, LIMIT).expect("decodes")),
        );
        group.bench_with_input(BenchmarkId::new("encode_response", name), &resp, |b, r| {
            b.iter(|| frame::encode(r, LIMIT).expect("encodes"))
        });
        let resp_bytes = frame::encode(&resp, LIMIT).expect("encodes");
        group.bench_with_input(
            BenchmarkId::new("decode_response", name),
            &resp_bytes,
            |b, bytes| b.iter(|| frame::decode::<ResponseFrame>(bytes, LIMIT).expect("decodes")),
        );
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
