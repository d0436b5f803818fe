//! The wire format's cost: decoding a request the guide's client wrote and
//! encoding the guide server's answer, per message.
//!
//! `cargo bench -p wasmux --bench codec`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::codec::{Decoder, Encoder};
use wasmux::client::guide_request;
use wasmux::codec::{Inbound, MessageCodec};
use wasmux::message::Message;

/// The request's bytes as the guide's client sends them.
fn wire(message: &Message) -> BytesMut {
    let mut bytes = BytesMut::new();
    MessageCodec::default().encode(message, &mut bytes).expect("a guide request encodes");
    bytes
}

fn codec(c: &mut Criterion) {
    let search = guide_request("search", "morpheus");
    let search_answer = Message::new("text/json", "utf-8", wasmux_guide::search(&search.content, "utf-8").expect("search"));
    let binary = guide_request("binary", "\u{1f603}");
    let binary_answer = Message::new(wasmux_guide::BINARY_RESPONSE_TYPE, "binary", wasmux_guide::binary_echo(&binary.content));

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    for (name, request, answer) in [("search", &search, &search_answer), ("binary", &binary, &binary_answer)] {
        let bytes = wire(request);
        let mut codec = MessageCodec::default();
        let mut input = BytesMut::with_capacity(bytes.len());
        let mut output = BytesMut::with_capacity(1024);
        group.bench_function(format!("decode {name} request"), |b| {
            b.iter(|| {
                input.extend_from_slice(&bytes);
                match codec.decode(&mut input) {
                    Ok(Some(Inbound::Message(message))) => black_box(message),
                    other => panic!("the request did not decode: {other:?}"),
                }
            })
        });
        group.bench_function(format!("encode {name} answer"), |b| {
            b.iter(|| {
                output.clear();
                codec.encode(black_box(answer), &mut output).expect("the answer encodes");
                black_box(output.len())
            })
        });
        group.bench_function(format!("decode {name} request + encode answer"), |b| {
            b.iter(|| {
                input.extend_from_slice(&bytes);
                let Ok(Some(Inbound::Message(message))) = codec.decode(&mut input) else {
                    panic!("the request did not decode");
                };
                black_box(&message);
                output.clear();
                codec.encode(black_box(answer), &mut output).expect("the answer encodes");
                black_box(output.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
