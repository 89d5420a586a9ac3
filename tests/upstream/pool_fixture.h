#pragma once
// What UpstreamPool's tests share (pool_test.cc, plain_test.cc): a reactor
// of the parameter's backend, a TLS context on the system store, the
// shard's and the upstreams' stats, and a pool over `upstreams_` that the
// test drives by hand, one loop turn at a time.

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <vector>

#include "dotproxy/upstream/pool.h"
#include "tests/io/test_reactor.h"

namespace dotproxy::upstream {

class PoolFixture : public ::testing::TestWithParam<io::IoBackend> {
 protected:
  // Skips the test when the backend is unavailable here (check IsSkipped()
  // after calling it from a derived SetUp).
  void SetUp() override {
    reactor_ = io::MakeTestReactor(GetParam());
    if (reactor_ == nullptr) GTEST_SKIP() << io::ToString(GetParam()) << " unavailable";
    tls::GlobalInit();
    auto context = tls::ClientContext::Create("");
    ASSERT_TRUE(context.ok()) << context.status();
    tls_context_ = *std::move(context);
  }

  // A pool over `upstreams_` with `settings_`, started; its answers and
  // losses go to `sink`.
  void MakePool(AnswerSink& sink, int rounds) {
    if (upstream_stats_ == nullptr) {
      upstream_stats_ = std::make_unique<metrics::UpstreamStats[]>(upstreams_.size());
    }
    pool_ = std::make_unique<UpstreamPool>(upstreams_, settings_, *reactor_, clock_, *tls_context_,
                                           stats_, upstream_stats_.get(), 0);
    pool_->set_sink(&sink);
    pool_->Start();
    Pump(rounds);
  }

  // `rounds` loop turns: flush, wait up to 5 ms, route the completions.
  void Pump(int rounds) {
    for (int i = 0; i < rounds; ++i) {
      clock_.Update();
      pool_->Flush();
      ASSERT_TRUE(io::TurnOnce(*reactor_, std::chrono::milliseconds(5),
                               [&](const io::Completion& c) {
                                 pool_->OnCompletion(c.data.index, c);
                               }));
      reactor_->PublishBuffers();
    }
  }

  std::unique_ptr<io::Reactor> reactor_;
  std::unique_ptr<tls::ClientContext> tls_context_;
  io::LoopClock clock_;
  metrics::ShardStats stats_;
  std::unique_ptr<metrics::UpstreamStats[]> upstream_stats_;
  std::vector<config::UpstreamConfig> upstreams_;
  PoolSettings settings_;
  std::unique_ptr<UpstreamPool> pool_;
  std::vector<uint8_t> query_;
};

}  // namespace dotproxy::upstream
