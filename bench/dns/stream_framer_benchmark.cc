// Micro-benchmarks for dns::StreamFramer (include/dotproxy/dns/stream_framer.h):
// splitting a received batch of length-prefixed DNS messages (TCP clients,
// decrypted DoT answers) and writing a batch's prefixes (what goes upstream).

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "bench/common/wire.h"
#include "dotproxy/dns/message.h"
#include "dotproxy/dns/stream_framer.h"

namespace dotproxy::dns {
namespace {

// `count` answers, each with its 2-byte big-endian length prefix, back to back.
std::vector<uint8_t> FramedBatch(int count) {
  std::vector<uint8_t> stream;
  for (const std::string& name : bench::MakeNames(static_cast<size_t>(count))) {
    const std::vector<uint8_t> msg = bench::MakeAnswer(name, 7, true);
    bench::PutU16(stream, static_cast<uint16_t>(msg.size()));
    stream.insert(stream.end(), msg.begin(), msg.end());
  }
  return stream;
}

// One read delivering the whole batch: Commit, pull every message, Compact.
void BM_StreamFramer_SplitBatch(benchmark::State& state) {
  const int count = static_cast<int>(state.range(0));
  const std::vector<uint8_t> stream = FramedBatch(count);
  StreamFramer framer(64 * 1024);
  for (auto _ : state) {
    std::span<uint8_t> space = framer.WritableSpace();
    std::memcpy(space.data(), stream.data(), stream.size());
    framer.Commit(stream.size());
    std::span<uint8_t> msg;
    int got = 0;
    while (framer.NextMessage(65535, msg) == StreamFramer::Next::kMessage) {
      benchmark::DoNotOptimize(msg.data());
      ++got;
    }
    framer.Compact();
    if (got != count) state.SkipWithError("framer lost messages");
  }
  state.SetItemsProcessed(state.iterations() * count);
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(stream.size()));
}
BENCHMARK(BM_StreamFramer_SplitBatch)->Arg(1)->Arg(50);

// The same batch arriving in 100-byte pieces (small TLS records / TCP segments):
// messages straddle reads, so Compact moves partial messages.
void BM_StreamFramer_SplitBatchInPieces(benchmark::State& state) {
  const int count = static_cast<int>(state.range(0));
  const std::vector<uint8_t> stream = FramedBatch(count);
  StreamFramer framer(64 * 1024);
  for (auto _ : state) {
    int got = 0;
    for (size_t off = 0; off < stream.size(); off += 100) {
      const size_t n = std::min<size_t>(100, stream.size() - off);
      std::memcpy(framer.WritableSpace().data(), stream.data() + off, n);
      framer.Commit(n);
      std::span<uint8_t> msg;
      while (framer.NextMessage(65535, msg) == StreamFramer::Next::kMessage) {
        benchmark::DoNotOptimize(msg.data());
        ++got;
      }
      framer.Compact();
    }
    if (got != count) state.SkipWithError("framer lost messages");
  }
  state.SetItemsProcessed(state.iterations() * count);
}
BENCHMARK(BM_StreamFramer_SplitBatchInPieces)->Arg(50);

// Building a batch of upstream queries for one TLS write: prefix + copy each
// message into a contiguous buffer (what the shard's pending_plain holds).
void BM_StreamFramer_FrameBatch(benchmark::State& state) {
  const int count = static_cast<int>(state.range(0));
  std::vector<std::vector<uint8_t>> queries;
  for (const std::string& name : bench::MakeNames(static_cast<size_t>(count))) {
    queries.push_back(bench::MakeQuery(name, 7, true));
  }
  std::vector<uint8_t> batch;
  batch.reserve(64 * 1024);
  for (auto _ : state) {
    batch.clear();
    for (const auto& q : queries) {
      const size_t at = batch.size();
      batch.resize(at + 2 + q.size());
      WriteU16(batch.data() + at, static_cast<uint16_t>(q.size()));
      std::memcpy(batch.data() + at + 2, q.data(), q.size());
    }
    benchmark::DoNotOptimize(batch.data());
  }
  state.SetItemsProcessed(state.iterations() * count);
}
BENCHMARK(BM_StreamFramer_FrameBatch)->Arg(50);

}  // namespace
}  // namespace dotproxy::dns

BENCHMARK_MAIN();
