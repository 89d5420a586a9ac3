// DohClient against a real nghttp2 server session in memory: the bytes the
// client drains are what the server parses, and the other way round.

#include "dotproxy/http/doh_client.h"

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace dotproxy::http {
namespace {

using Result = DohClient::Result;

struct Report {
  uint16_t tag;
  Result result;
  int status;
  std::vector<uint8_t> body;
};

class Recorder : public DohClient::Observer {
 public:
  void OnResponse(uint16_t tag, Result result, int status, std::span<uint8_t> body) override {
    reports.push_back({tag, result, status, {body.begin(), body.end()}});
    if (on_report) on_report(tag);
  }
  std::vector<Report> reports;
  std::function<void(uint16_t)> on_report;
};

// A DoH server: records each request, answers when the test says so.
class Server {
 public:
  struct Request {
    std::map<std::string, std::string> headers;
    std::vector<uint8_t> body;
    bool complete = false;
  };

  explicit Server(uint32_t max_streams = 100) {
    nghttp2_session_callbacks* callbacks;
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_on_header_callback(
        callbacks, [](nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                      size_t namelen, const uint8_t* value, size_t valuelen, uint8_t,
                      void* self) {
          static_cast<Server*>(self)->requests[frame->hd.stream_id].headers[std::string(
              reinterpret_cast<const char*>(name), namelen)] =
              std::string(reinterpret_cast<const char*>(value), valuelen);
          return 0;
        });
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
        callbacks, [](nghttp2_session*, uint8_t, int32_t stream_id, const uint8_t* data,
                      size_t len, void* self) {
          auto& body = static_cast<Server*>(self)->requests[stream_id].body;
          body.insert(body.end(), data, data + len);
          return 0;
        });
    nghttp2_session_callbacks_set_on_frame_recv_callback(
        callbacks, [](nghttp2_session*, const nghttp2_frame* frame, void* self) {
          if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
              (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
            static_cast<Server*>(self)->requests[frame->hd.stream_id].complete = true;
          }
          return 0;
        });
    nghttp2_session_server_new(&session_, callbacks, this);
    nghttp2_session_callbacks_del(callbacks);
    const nghttp2_settings_entry entries[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_streams}};
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, entries, 1);
  }
  ~Server() { nghttp2_session_del(session_); }

  // Complete requests not answered yet, by stream id.
  std::vector<int32_t> Pending() const {
    std::vector<int32_t> ids;
    for (const auto& [id, request] : requests) {
      if (request.complete && !answered.count(id)) ids.push_back(id);
    }
    return ids;
  }

  void Respond(int32_t stream_id, const char* status, const char* content_type,
               std::vector<uint8_t> body) {
    answered[stream_id] = true;
    bodies_[stream_id] = {std::move(body), 0};
    const std::string length = std::to_string(bodies_[stream_id].first.size());
    lengths_[stream_id] = length;
    const nghttp2_nv headers[] = {
        {(uint8_t*)":status", (uint8_t*)status, 7, strlen(status), NGHTTP2_NV_FLAG_NONE},
        {(uint8_t*)"content-type", (uint8_t*)content_type, 12, strlen(content_type),
         NGHTTP2_NV_FLAG_NONE},
        {(uint8_t*)"content-length", (uint8_t*)lengths_[stream_id].data(), 14,
         lengths_[stream_id].size(), NGHTTP2_NV_FLAG_NONE},
    };
    nghttp2_data_provider provider;
    provider.source.ptr = &bodies_[stream_id];
    provider.read_callback = [](nghttp2_session*, int32_t, uint8_t* buf, size_t length,
                                uint32_t* flags, nghttp2_data_source* source, void*) -> ssize_t {
      auto* state = static_cast<std::pair<std::vector<uint8_t>, size_t>*>(source->ptr);
      const size_t n = std::min(length, state->first.size() - state->second);
      std::memcpy(buf, state->first.data() + state->second, n);
      state->second += n;
      if (state->second == state->first.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
      return static_cast<ssize_t>(n);
    };
    ASSERT_EQ(nghttp2_submit_response(session_, stream_id, headers, 3, &provider), 0);
  }

  // The DNS answer for a request: its query with QR set.
  std::vector<uint8_t> AnswerFor(int32_t stream_id) const {
    std::vector<uint8_t> answer = requests.at(stream_id).body;
    answer[2] |= 0x80;
    return answer;
  }

  void Reset(int32_t stream_id, uint32_t code) {
    answered[stream_id] = true;
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream_id, code);
  }
  void GoAway(int32_t last_stream_id) {
    nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, last_stream_id, NGHTTP2_NO_ERROR,
                          nullptr, 0);
  }

  nghttp2_session* session() { return session_; }
  std::map<int32_t, Request> requests;
  std::map<int32_t, bool> answered;

 private:
  nghttp2_session* session_;
  std::map<int32_t, std::pair<std::vector<uint8_t>, size_t>> bodies_;
  std::map<int32_t, std::string> lengths_;
};

std::vector<uint8_t> Query(uint16_t id, uint8_t marker) {
  // Header (ID, RD) + "a." A IN; `marker` in the label tells queries apart.
  return {static_cast<uint8_t>(id >> 8), static_cast<uint8_t>(id), 0x01, 0x00, 0, 1, 0, 0, 0, 0,
          0, 0, 1, marker, 0, 0, 1, 0, 1};
}

class DohClientTest : public ::testing::Test {
 protected:
  explicit DohClientTest(uint32_t server_streams = 100, size_t slots = 16)
      : server_(server_streams),
        client_({.authority = "dns.example", .path = "/dns-query", .max_streams = slots},
                recorder_) {}

  void SetUp() override { ASSERT_TRUE(client_.Start().ok()); }

  // Moves bytes both ways until neither side has anything to say.
  void Pump() {
    for (int round = 0; round < 50; ++round) {
      std::vector<uint8_t> out;
      ASSERT_TRUE(client_.Drain(out));
      bool moved = !out.empty();
      if (!out.empty()) {
        ASSERT_EQ(nghttp2_session_mem_recv(server_.session(), out.data(), out.size()),
                  static_cast<ssize_t>(out.size()));
      }
      std::vector<uint8_t> back;
      const uint8_t* data;
      ssize_t n;
      while ((n = nghttp2_session_mem_send(server_.session(), &data)) > 0) {
        back.insert(back.end(), data, data + n);
      }
      if (!back.empty()) {
        moved = true;
        ASSERT_TRUE(client_.Receive(back)) << client_.error();
      }
      if (!moved) return;
    }
    FAIL() << "no quiescence";
  }

  Recorder recorder_;
  Server server_;
  DohClient client_;
};

TEST_F(DohClientTest, PostsWithDohHeadersAndIdZero) {
  const auto query = Query(0xBEEF, 'x');
  ASSERT_TRUE(client_.Submit(7, query));
  Pump();
  ASSERT_EQ(server_.Pending().size(), 1u);
  const auto& request = server_.requests[server_.Pending()[0]];
  EXPECT_EQ(request.headers.at(":method"), "POST");
  EXPECT_EQ(request.headers.at(":scheme"), "https");
  EXPECT_EQ(request.headers.at(":authority"), "dns.example");
  EXPECT_EQ(request.headers.at(":path"), "/dns-query");
  EXPECT_EQ(request.headers.at("content-type"), "application/dns-message");
  EXPECT_EQ(request.headers.at("accept"), "application/dns-message");
  EXPECT_EQ(request.headers.at("content-length"), std::to_string(query.size()));
  ASSERT_EQ(request.body.size(), query.size());
  EXPECT_EQ(request.body[0], 0);
  EXPECT_EQ(request.body[1], 0);
  EXPECT_TRUE(std::equal(query.begin() + 2, query.end(), request.body.begin() + 2));
}

TEST_F(DohClientTest, ConcurrentStreamsAnsweredOutOfOrderMatchByTag) {
  for (uint16_t tag = 1; tag <= 5; ++tag) ASSERT_TRUE(client_.Submit(tag, Query(tag, 'a' + tag)));
  EXPECT_EQ(client_.active(), 5u);
  Pump();
  auto pending = server_.Pending();
  ASSERT_EQ(pending.size(), 5u);  // all five in flight at once, one connection
  std::reverse(pending.begin(), pending.end());
  for (int32_t id : pending) server_.Respond(id, "200", "application/dns-message", server_.AnswerFor(id));
  Pump();
  ASSERT_EQ(recorder_.reports.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    const Report& report = recorder_.reports[i];
    EXPECT_EQ(report.tag, 5 - i);  // last stream answered first
    EXPECT_EQ(report.result, Result::kAnswer);
    EXPECT_EQ(report.status, 200);
    ASSERT_EQ(report.body.size(), 19u);
    EXPECT_EQ(report.body[13], 'a' + report.tag);  // its own answer
    EXPECT_EQ(report.body[0] | report.body[1], 0);  // as sent: ID 0
  }
  EXPECT_EQ(client_.active(), 0u);
}

TEST_F(DohClientTest, HttpErrorStatusFailsTheQuery) {
  ASSERT_TRUE(client_.Submit(1, Query(1, 'a')));
  ASSERT_TRUE(client_.Submit(2, Query(2, 'b')));
  Pump();
  const auto pending = server_.Pending();
  server_.Respond(pending[0], "503", "text/plain", {'n', 'o'});
  server_.Respond(pending[1], "200", "text/html", server_.AnswerFor(pending[1]));
  Pump();
  ASSERT_EQ(recorder_.reports.size(), 2u);
  EXPECT_EQ(recorder_.reports[0].result, Result::kHttpStatus);
  EXPECT_EQ(recorder_.reports[0].status, 503);
  EXPECT_TRUE(recorder_.reports[0].body.empty());
  EXPECT_EQ(recorder_.reports[1].result, Result::kBadContentType);
}

TEST_F(DohClientTest, ContentTypeWithParametersAndCaseIsAccepted) {
  ASSERT_TRUE(client_.Submit(1, Query(1, 'a')));
  Pump();
  const int32_t id = server_.Pending()[0];
  server_.Respond(id, "200", "Application/DNS-Message; charset=binary", server_.AnswerFor(id));
  Pump();
  ASSERT_EQ(recorder_.reports.size(), 1u);
  EXPECT_EQ(recorder_.reports[0].result, Result::kAnswer);
}

TEST_F(DohClientTest, RstStreamFailsOnlyThatQuery) {
  ASSERT_TRUE(client_.Submit(1, Query(1, 'a')));
  ASSERT_TRUE(client_.Submit(2, Query(2, 'b')));
  Pump();
  const auto pending = server_.Pending();
  server_.Reset(pending[0], NGHTTP2_INTERNAL_ERROR);
  server_.Respond(pending[1], "200", "application/dns-message", server_.AnswerFor(pending[1]));
  Pump();
  ASSERT_EQ(recorder_.reports.size(), 2u);
  EXPECT_EQ(recorder_.reports[0].tag, 1);
  EXPECT_EQ(recorder_.reports[0].result, Result::kReset);
  EXPECT_EQ(recorder_.reports[1].tag, 2);
  EXPECT_EQ(recorder_.reports[1].result, Result::kAnswer);
  EXPECT_FALSE(client_.going_away());
}

TEST_F(DohClientTest, OversizedBodyFails) {
  ASSERT_TRUE(client_.Submit(1, Query(1, 'a')));
  Pump();
  const int32_t id = server_.Pending()[0];
  server_.Respond(id, "200", "application/dns-message", std::vector<uint8_t>(70000, 1));
  Pump();
  ASSERT_EQ(recorder_.reports.size(), 1u);
  EXPECT_EQ(recorder_.reports[0].result, Result::kBadBody);
}

TEST_F(DohClientTest, ShortBodyFails) {
  ASSERT_TRUE(client_.Submit(1, Query(1, 'a')));
  Pump();
  server_.Respond(server_.Pending()[0], "200", "application/dns-message", {1, 2, 3});
  Pump();
  ASSERT_EQ(recorder_.reports.size(), 1u);
  EXPECT_EQ(recorder_.reports[0].result, Result::kBadBody);
}

TEST_F(DohClientTest, GoawayLosesStreamsAboveLastStreamIdAndStopsNewOnes) {
  for (uint16_t tag = 1; tag <= 3; ++tag) ASSERT_TRUE(client_.Submit(tag, Query(tag, 'a')));
  Pump();
  const auto pending = server_.Pending();
  ASSERT_EQ(pending.size(), 3u);
  server_.GoAway(pending[0]);  // only the first stream will be processed
  server_.Respond(pending[0], "200", "application/dns-message", server_.AnswerFor(pending[0]));
  Pump();
  EXPECT_TRUE(client_.going_away());
  ASSERT_EQ(recorder_.reports.size(), 3u);
  std::map<uint16_t, Result> by_tag;
  for (const Report& report : recorder_.reports) by_tag[report.tag] = report.result;
  EXPECT_EQ(by_tag[1], Result::kAnswer);
  EXPECT_EQ(by_tag[2], Result::kRefused);
  EXPECT_EQ(by_tag[3], Result::kRefused);
  EXPECT_FALSE(client_.Submit(9, Query(9, 'z')));  // no new streams after GOAWAY
  EXPECT_EQ(client_.active(), 0u);
}

TEST_F(DohClientTest, StreamsBelowGoawayStillFinishThenTheSessionEnds) {
  for (uint16_t tag = 1; tag <= 3; ++tag) ASSERT_TRUE(client_.Submit(tag, Query(tag, 'a')));
  Pump();
  const auto pending = server_.Pending();
  server_.GoAway(pending[1]);  // streams 1 and 2 will still be answered
  Pump();
  EXPECT_TRUE(client_.going_away());
  ASSERT_EQ(recorder_.reports.size(), 1u);  // only the third, refused
  EXPECT_EQ(recorder_.reports[0].tag, 3);
  EXPECT_EQ(recorder_.reports[0].result, Result::kRefused);
  EXPECT_EQ(client_.active(), 2u);
  EXPECT_FALSE(client_.Finished());
  server_.Respond(pending[1], "200", "application/dns-message", server_.AnswerFor(pending[1]));
  server_.Respond(pending[0], "200", "application/dns-message", server_.AnswerFor(pending[0]));
  Pump();
  ASSERT_EQ(recorder_.reports.size(), 3u);
  EXPECT_EQ(recorder_.reports[1].result, Result::kAnswer);
  EXPECT_EQ(recorder_.reports[2].result, Result::kAnswer);
  EXPECT_EQ(client_.active(), 0u);
  EXPECT_TRUE(client_.Finished());  // nothing left: the connection may close
}

// A server's connection error (here DATA on stream 0, RFC 9113 §6.1):
// nghttp2 accepts the bytes, queues its GOAWAY and then wants nothing more.
// The connection (https.cc) closes on Finished(), so its queries are
// retried elsewhere instead of waiting for their deadlines.
TEST_F(DohClientTest, ServerProtocolErrorEndsTheSession) {
  ASSERT_TRUE(client_.Submit(1, Query(1, 'a')));
  Pump();
  EXPECT_FALSE(client_.Finished());
  const std::vector<uint8_t> data_on_stream_0 = {0, 0, 1, 0x0, 0, 0, 0, 0, 0, 'x'};
  client_.Receive(data_on_stream_0);
  std::vector<uint8_t> out;
  client_.Drain(out);  // our GOAWAY
  EXPECT_FALSE(client_.going_away());  // not the server's
  EXPECT_TRUE(client_.Finished());
}

TEST_F(DohClientTest, QueriesSubmittedAfterGoawayBeforeItIsReadAreRefused) {
  Pump();
  server_.GoAway(0);  // nothing will be processed
  // Submitted before the client has read the GOAWAY: the request goes out
  // (or is dropped by nghttp2) and must come back refused, never lost.
  ASSERT_TRUE(client_.Submit(1, Query(1, 'a')));
  Pump();
  ASSERT_EQ(recorder_.reports.size(), 1u);
  EXPECT_EQ(recorder_.reports[0].result, Result::kRefused);
  EXPECT_EQ(client_.active(), 0u);
}

TEST_F(DohClientTest, CancelledQueryIsNotReported) {
  ASSERT_TRUE(client_.Submit(1, Query(1, 'a')));
  Pump();
  const int32_t id = server_.Pending()[0];
  client_.Cancel(1);
  EXPECT_EQ(client_.active(), 0u);
  server_.Respond(id, "200", "application/dns-message", server_.AnswerFor(id));
  Pump();
  EXPECT_TRUE(recorder_.reports.empty());
  // The tag is free again.
  ASSERT_TRUE(client_.Submit(1, Query(1, 'b')));
}

TEST_F(DohClientTest, SlotsAndTagsAreBounded) {
  for (uint16_t tag = 0; tag < 16; ++tag) ASSERT_TRUE(client_.Submit(tag, Query(tag, 'a')));
  EXPECT_FALSE(client_.Submit(100, Query(100, 'a')));  // every slot taken
  client_.Reset();
  ASSERT_TRUE(client_.Start().ok());
  ASSERT_TRUE(client_.Submit(3, Query(3, 'a')));
  EXPECT_FALSE(client_.Submit(3, Query(3, 'a')));  // tag in use
}

TEST_F(DohClientTest, SubmitFromAReportReusesTheSlot) {
  ASSERT_TRUE(client_.Submit(1, Query(1, 'a')));
  Pump();
  recorder_.on_report = [this](uint16_t tag) {
    if (tag == 1) {
      EXPECT_TRUE(client_.Submit(2, Query(2, 'b')));
    }
  };
  const int32_t id = server_.Pending()[0];
  server_.Respond(id, "200", "application/dns-message", server_.AnswerFor(id));
  Pump();
  ASSERT_GE(recorder_.reports.size(), 1u);
  EXPECT_EQ(recorder_.reports[0].body[13], 'a');  // its body intact in the report
  ASSERT_EQ(server_.Pending().size(), 1u);
  EXPECT_EQ(server_.requests[server_.Pending()[0]].body[13], 'b');
}

class DohClientFewStreamsTest : public DohClientTest {
 protected:
  DohClientFewStreamsTest() : DohClientTest(/*server_streams=*/2) {}
};

TEST_F(DohClientFewStreamsTest, QueuesBeyondPeerMaxConcurrentStreams) {
  Pump();  // the server's SETTINGS arrive
  EXPECT_EQ(client_.peer_max_streams(), 2u);
  for (uint16_t tag = 1; tag <= 5; ++tag) ASSERT_TRUE(client_.Submit(tag, Query(tag, 'a' + tag)));
  std::vector<uint16_t> seen;
  for (int round = 0; round < 5 && recorder_.reports.size() < 5; ++round) {
    Pump();
    const auto pending = server_.Pending();
    EXPECT_LE(pending.size(), 2u);  // never more than the peer allows
    for (int32_t id : pending) server_.Respond(id, "200", "application/dns-message", server_.AnswerFor(id));
  }
  Pump();
  ASSERT_EQ(recorder_.reports.size(), 5u);
  for (const Report& report : recorder_.reports) {
    EXPECT_EQ(report.result, Result::kAnswer);
    EXPECT_EQ(report.body[13], 'a' + report.tag);
  }
}

TEST_F(DohClientTest, SteadyStateDoesNotReachMalloc) {
  auto round = [this] {
    for (uint16_t tag = 0; tag < 16; ++tag) ASSERT_TRUE(client_.Submit(tag, Query(tag, 'a')));
    Pump();
    for (int32_t id : server_.Pending()) {
      server_.Respond(id, "200", "application/dns-message", server_.AnswerFor(id));
    }
    Pump();
  };
  for (int i = 0; i < 5; ++i) round();  // warm-up: HPACK tables, stream state
  const uint64_t before = client_.pool().system_allocations();
  for (int i = 0; i < 50; ++i) round();
  EXPECT_EQ(client_.pool().system_allocations(), before);
  EXPECT_EQ(recorder_.reports.size(), 55u * 16);
}

TEST(RecyclingPoolTest, ReusesFreedBlocksAndGrowsInPlace) {
  RecyclingPool pool;
  void* a = pool.Allocate(100);
  pool.Free(a);
  EXPECT_EQ(pool.Allocate(120), a);  // same class
  EXPECT_EQ(pool.Reallocate(a, 128), a);
  std::memset(a, 7, 128);
  void* b = pool.Reallocate(a, 1000);
  EXPECT_EQ(static_cast<uint8_t*>(b)[127], 7);
  void* large = pool.Allocate(1 << 20);
  std::memset(large, 3, 1 << 20);
  void* larger = pool.Reallocate(large, 2 << 20);
  EXPECT_EQ(static_cast<uint8_t*>(larger)[(1 << 20) - 1], 3);
  pool.Free(larger);
  pool.Free(b);
  EXPECT_EQ(pool.system_allocations(), 4u);
}

}  // namespace
}  // namespace dotproxy::http
