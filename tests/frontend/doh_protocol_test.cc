// DohProtocol, the DoH listener's StreamProtocol, driven as the TLS room
// drives it (InputSpace/CommitInput, BeginAnswer/CommitAnswer/QueryDone,
// Output/Consumed) by a real nghttp2 client session in memory.
#include "src/frontend/doh_protocol.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "dotproxy/frontend/client_ref.h"
#include "gtest/gtest.h"
#include "tests/http/h2_test_client.h"

namespace dotproxy::frontend {
namespace {

using namespace http::h2test;  // NOLINT: test helpers

struct RecordingHost : StreamProtocol::Host {
  bool OnQuery(std::span<uint8_t> wire, uint32_t stream) override {
    queries.push_back({stream, std::vector<uint8_t>(wire.begin(), wire.end())});
    if (protocol != nullptr && close_at == queries.size()) {
      protocol->Reset();  // what the room's Close does when nothing is in flight
      return false;
    }
    return true;
  }
  DohProtocol* protocol = nullptr;
  size_t close_at = 0;
  std::vector<std::pair<uint32_t, std::vector<uint8_t>>> queries;
};

// What the room does with decrypted bytes and with bytes to encrypt.
struct Room {
  DohProtocol& protocol;
  RecordingHost& host;
  int Receive(std::span<const uint8_t> data) {
    while (!data.empty()) {
      std::span<uint8_t> space = protocol.InputSpace();
      const size_t n = std::min(space.size(), data.size());
      std::memcpy(space.data(), data.data(), n);
      data = data.subspan(n);
      if (protocol.CommitInput(n, host) != StreamProtocol::Intake::kOk) return 1;
    }
    return 0;
  }
  size_t WriteOutput(std::span<uint8_t> out) {
    std::span<const uint8_t> pending = protocol.Output();
    const size_t n = std::min(pending.size(), out.size());
    std::memcpy(out.data(), pending.data(), n);
    protocol.Consumed(n);
    return n;
  }
  void Answer(uint32_t stream, const std::vector<uint8_t>& answer) {
    std::span<uint8_t> space = protocol.BeginAnswer(stream, 65535);
    ASSERT_GE(space.size(), answer.size());
    std::memcpy(space.data(), answer.data(), answer.size());
    protocol.CommitAnswer(stream, answer.size());
    protocol.QueryDone(stream);
  }
};

class DohProtocolTest : public ::testing::Test {
 protected:
  DohProtocolTest()
      : out_(StreamProtocol::kOutCapacity), protocol_(http::DohServerOptions{}, out_),
        room_{protocol_, host_} {
    protocol_.Reset();
  }
  std::vector<uint8_t> out_;  // the room's answer buffer for the slot
  DohProtocol protocol_;
  RecordingHost host_;
  Room room_;
  Client client_;
};

TEST_F(DohProtocolTest, QueriesGoUpWithTheirStreamAndAnswersComeBack) {
  const int32_t get = client_.Get(Query(1));
  const int32_t post = client_.Post(Query(2));
  client_.Pump(room_);
  ASSERT_EQ(host_.queries.size(), 2u);
  EXPECT_EQ(host_.queries[0].first, static_cast<uint32_t>(get));
  EXPECT_EQ(host_.queries[1].first, static_cast<uint32_t>(post));
  room_.Answer(post, AnswerFor(2, {30}));
  room_.Answer(get, AnswerFor(1, {40}));
  client_.Pump(room_);
  EXPECT_EQ(client_.responses[get].status, 200);
  EXPECT_EQ(client_.responses[get].body, AnswerFor(1, {40}));
  EXPECT_EQ(client_.responses[post].headers.at("cache-control"), "max-age=30");
  EXPECT_EQ(protocol_.session().queries_in_flight(), 0u);
}

TEST_F(DohProtocolTest, TheQueryLimitIsTheProxysLargestQuery) {
  const int32_t ok = client_.Post(std::vector<uint8_t>(kMaxQuerySize, 0));
  const int32_t big = client_.Post(std::vector<uint8_t>(kMaxQuerySize + 1, 0));
  client_.Pump(room_);
  EXPECT_EQ(client_.responses[big].status, 413);
  ASSERT_EQ(host_.queries.size(), 1u);
  EXPECT_EQ(host_.queries[0].first, static_cast<uint32_t>(ok));
}

TEST_F(DohProtocolTest, AnswerForAResetStreamIsANoOpNotAClose) {
  const int32_t id = client_.Post(Query(1));
  client_.Pump(room_);
  client_.Reset(id);
  client_.Pump(room_);
  // Space is still given (an empty span would make the room close the
  // connection as a slow reader); committing it does nothing.
  EXPECT_FALSE(protocol_.BeginAnswer(id, 512).empty());
  protocol_.CommitAnswer(id, 0);
  room_.Answer(id, AnswerFor(1, {30}));
  client_.Pump(room_);
  EXPECT_EQ(client_.responses[id].status, 0);
  EXPECT_EQ(protocol_.session().streams_in_use(), 0u);
  EXPECT_EQ(protocol_.session().stats().doh_late_answers.load(), 1u);
}

TEST_F(DohProtocolTest, MidMessageWhileARequestIsIncomplete) {
  EXPECT_FALSE(protocol_.mid_message());
  nghttp2_nv nva[] = {
      {(uint8_t*)":method", (uint8_t*)"POST", 7, 4, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t*)":scheme", (uint8_t*)"https", 7, 5, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t*)":authority", (uint8_t*)"x", 10, 1, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t*)":path", (uint8_t*)"/dns-query", 5, 10, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t*)"content-type", (uint8_t*)"application/dns-message", 12, 23, NGHTTP2_NV_FLAG_NONE},
  };
  nghttp2_submit_headers(client_.session_, NGHTTP2_FLAG_NONE, -1, nullptr, nva, 5, nullptr);
  client_.Pump(room_);
  EXPECT_TRUE(protocol_.mid_message());
}

TEST_F(DohProtocolTest, GarbageIsAnErrorAndResetServesTheNextConnection) {
  const char garbage[] = "GET / HTTP/1.1\r\n\r\n";
  std::span<uint8_t> space = protocol_.InputSpace();
  std::memcpy(space.data(), garbage, sizeof(garbage) - 1);
  EXPECT_EQ(protocol_.CommitInput(sizeof(garbage) - 1, host_), StreamProtocol::Intake::kError);
  protocol_.Reset();
  const int32_t id = client_.Get(Query(7));
  client_.Pump(room_);
  ASSERT_EQ(host_.queries.size(), 1u);
  EXPECT_EQ(host_.queries[0].first, static_cast<uint32_t>(id));
}

TEST_F(DohProtocolTest, ClosedFromInsideAQueryStopsIntakeAndResetsAfter) {
  host_.protocol = &protocol_;
  host_.close_at = 1;
  client_.Get(Query(1));
  client_.Get(Query(2));
  client_.Get(Query(3));
  client_.Pump(room_);
  EXPECT_EQ(client_.last_receive_, 1);  // not kOk
  EXPECT_EQ(host_.queries.size(), 1u);
  // The deferred Reset ran once nghttp2 had returned: a fresh session.
  EXPECT_EQ(protocol_.session().streams_in_use(), 0u);
  EXPECT_EQ(protocol_.session().queries_in_flight(), 0u);
}

TEST_F(DohProtocolTest, OutputIsGatheredAcrossManyAnswers) {
  std::vector<int32_t> ids;
  for (uint16_t i = 0; i < 50; ++i) ids.push_back(client_.Get(Query(i)));
  client_.Pump(room_);
  ASSERT_EQ(host_.queries.size(), 50u);
  for (const auto& [stream, wire] : host_.queries) {
    room_.Answer(stream, AnswerFor(static_cast<uint16_t>(wire[0] << 8 | wire[1]), {60}));
  }
  // Fifty answers' frames come out as one contiguous span (one TLS record
  // for the room), not one per frame.
  std::span<const uint8_t> out = protocol_.Output();
  EXPECT_GT(out.size(), 50u * 60);
  client_.Pump(room_);
  for (uint16_t i = 0; i < 50; ++i) EXPECT_EQ(client_.responses[ids[i]].status, 200);
}

}  // namespace
}  // namespace dotproxy::frontend
