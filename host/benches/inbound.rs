//! Hot paths of the inbound side: command parsing and the DATA reader.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tidegate::inbound::body::{BareLineEndings, DotReader};
use tidegate::inbound::command::Command;

fn benches(c: &mut Criterion) {
    c.bench_function("command/parse_rcpt", |b| {
        b.iter(|| {
            Command::parse(std::hint::black_box(
                b"RCPT TO:<someone@example.test> NOTIFY=NEVER",
            ))
        });
    });

    let mut message = Vec::new();
    while message.len() < 1024 * 1024 {
        message.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do.\r\n",
        );
        message.extend_from_slice(b"..a stuffed line\r\n");
    }
    message.extend_from_slice(b".\r\n");
    let mut group = c.benchmark_group("body");
    group.throughput(Throughput::Bytes(message.len() as u64));
    group.bench_function("dot_reader_1mib_in_16k_reads", |b| {
        let mut out = Vec::with_capacity(message.len());
        b.iter(|| {
            out.clear();
            let mut reader = DotReader::new(BareLineEndings::Reject, 998);
            for chunk in message.chunks(16 * 1024) {
                let fed = reader.feed(chunk, Some(&mut out));
                if fed.complete {
                    break;
                }
            }
            std::hint::black_box(out.len())
        });
    });
    group.finish();
}

criterion_group!(inbound_benches, benches);
criterion_main!(inbound_benches);
