#pragma once
// A small real reactor for tests of rooms that do I/O (front ends, pool,
// the reactor itself), and one loop turn. Test-only; shard thread rules
// apply: create and use it on the test's thread.

#include <chrono>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "dotproxy/io/reactor.h"

namespace dotproxy::io {

// Null when the backend is unavailable here (tests then skip).
inline std::unique_ptr<Reactor> MakeTestReactor(IoBackend backend = IoBackend::kUring) {
  ReactorOptions options;
  options.backend = backend;
  options.submission_entries = 64;
  options.completion_entries = 256;
  options.datagram_buffers = 16;
  options.datagram_buffer_size = 2048;
  auto reactor = Reactor::Create(options);
  if (!reactor.ok()) return nullptr;
  return *std::move(reactor);
}

// Submits, waits up to `wait` and hands every completion to `route`.
template <typename Route>
bool TurnOnce(Reactor& reactor, std::chrono::milliseconds wait, Route&& route) {
  if (!reactor.SubmitAndWait(wait).ok()) return false;
  reactor.Reap([&](const Completion& c) { route(c); });
  return true;
}

// For INSTANTIATE_TEST_SUITE_P: every room test runs on both backends.
inline std::string BackendName(const ::testing::TestParamInfo<IoBackend>& info) {
  return ToString(info.param);
}

}  // namespace dotproxy::io
