// DohServerSession against a real nghttp2 client session, in memory: the
// client's frames go straight into Receive and WriteOutput's bytes straight
// into the client.
#include "dotproxy/http/doh_server.h"

#include <nghttp2/nghttp2.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "src/http/bounded_pool.h"
#include "tests/http/h2_test_client.h"

namespace dotproxy::http {
namespace {

using namespace h2test;  // NOLINT: test helpers
constexpr size_t kMaxQuery = 1024;

struct Sink : DohQuerySink {
  void OnDohQuery(int32_t stream_id, std::span<uint8_t> wire) override {
    queries.push_back({stream_id, std::vector<uint8_t>(wire.begin(), wire.end())});
    if (session != nullptr && answer_at_once) {
      std::vector<uint8_t> answer = AnswerFor(0, {300});
      session->Answer(stream_id, answer);
      session->QueryDone(stream_id);
    }
  }
  std::vector<std::pair<int32_t, std::vector<uint8_t>>> queries;
  DohServerSession* session = nullptr;
  bool answer_at_once = false;
};

class DohServerSessionTest : public ::testing::Test {
 protected:
  DohServerOptions Options() {
    DohServerOptions options;
    options.max_query_bytes = kMaxQuery;
    return options;
  }
  void Start(const DohServerOptions& options) {
    server_ = std::make_unique<DohServerSession>(options);
    sink_.session = server_.get();
    ASSERT_TRUE(server_->Start(&sink_).ok());
  }
  void SetUp() override { Start(Options()); }
  int StatusOf(int32_t id) { return client_.responses[id].status; }

  Sink sink_;
  std::unique_ptr<DohServerSession> server_;
  Client client_;
};

TEST_F(DohServerSessionTest, GetAndPostReachTheSinkAndAreAnswered) {
  const std::vector<uint8_t> query = Query(0);
  const int32_t get = client_.Get(query);
  const int32_t post = client_.Post(query);
  client_.Pump(*server_);
  ASSERT_EQ(sink_.queries.size(), 2u);
  EXPECT_EQ(sink_.queries[0].first, get);
  EXPECT_EQ(sink_.queries[0].second, query);
  EXPECT_EQ(sink_.queries[1].first, post);
  EXPECT_EQ(sink_.queries[1].second, query);
  EXPECT_EQ(server_->queries_in_flight(), 2u);

  const std::vector<uint8_t> answer = AnswerFor(0, {300, 60, 3600});
  for (int32_t id : {get, post}) {
    EXPECT_TRUE(server_->Answer(id, answer));
    server_->QueryDone(id);
  }
  client_.Pump(*server_);
  for (int32_t id : {get, post}) {
    const Response& r = client_.responses[id];
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.headers.at("content-type"), "application/dns-message");
    EXPECT_EQ(r.headers.at("content-length"), std::to_string(answer.size()));
    EXPECT_EQ(r.headers.at("cache-control"), "max-age=60");
    EXPECT_EQ(r.body, answer);
    EXPECT_TRUE(r.closed);
  }
  EXPECT_EQ(server_->queries_in_flight(), 0u);
  EXPECT_EQ(server_->streams_in_use(), 0u);
  EXPECT_EQ(server_->stats().doh_answers.load(), 2u);
  EXPECT_TRUE(server_->alive());
}

TEST_F(DohServerSessionTest, AnswersFromInsideTheSinkCallback) {
  sink_.answer_at_once = true;
  const int32_t id = client_.Post(Query(0));
  client_.Pump(*server_);
  EXPECT_EQ(StatusOf(id), 200);
  EXPECT_EQ(client_.responses[id].headers.at("cache-control"), "max-age=300");
  EXPECT_EQ(server_->streams_in_use(), 0u);
}

TEST_F(DohServerSessionTest, ManyConcurrentStreamsAnsweredOutOfOrder) {
  std::vector<int32_t> ids;
  for (uint16_t i = 0; i < 100; ++i) ids.push_back(i % 2 ? client_.Get(Query(i)) : client_.Post(Query(i)));
  client_.Pump(*server_);
  ASSERT_EQ(sink_.queries.size(), 100u);
  EXPECT_EQ(server_->stats().doh_refused_streams.load(), 0u);
  // Each answer carries its query's ID: answered last to first, every body
  // must still land on its own stream.
  for (size_t i = sink_.queries.size(); i-- > 0;) {
    const auto& [stream, wire] = sink_.queries[i];
    const uint16_t id = static_cast<uint16_t>(wire[0] << 8 | wire[1]);
    ASSERT_TRUE(server_->Answer(stream, AnswerFor(id, {static_cast<uint32_t>(id + 10)})));
    server_->QueryDone(stream);
    if (i % 10 == 0) client_.Pump(*server_);
  }
  client_.Pump(*server_);
  for (uint16_t i = 0; i < 100; ++i) {
    const Response& r = client_.responses[ids[i]];
    ASSERT_EQ(r.status, 200) << i;
    EXPECT_EQ(r.body, AnswerFor(i, {i + 10u}));
    EXPECT_EQ(r.headers.at("cache-control"), "max-age=" + std::to_string(i + 10));
  }
  EXPECT_EQ(server_->streams_in_use(), 0u);
  // Bounded: a hundred concurrent streams fit well inside the pool.
  EXPECT_LT(server_->pool().high_water(), server_->pool().capacity() / 2);
  std::printf("pool high water, 100 streams: %zu bytes\n", server_->pool().high_water());
  EXPECT_EQ(server_->pool().failures(), 0u);
}

TEST_F(DohServerSessionTest, ErrorStatuses) {
  const std::vector<uint8_t> query = Query(0);
  std::vector<uint8_t> response_bit = query;
  response_bit[2] |= 0x80;
  const std::vector<uint8_t> big(kMaxQuery + 1, 0);
  struct Case {
    int32_t id;
    int status;
  };
  std::vector<Case> cases = {
      {client_.Get(query, "/other"), 404},
      {client_.Request("GET", "/dns-query/x?dns=" + Base64Url(query)), 404},
      {client_.Request("PUT", "/dns-query", {{"content-type", "application/dns-message"}}, &query), 405},
      {client_.Request("HEAD", "/dns-query?dns=" + Base64Url(query)), 405},
      {client_.Post(query, "text/plain"), 415},
      {client_.Request("POST", "/dns-query", {}, &query), 415},  // no content-type
      {client_.Post(big), 413},
      {client_.Get(std::vector<uint8_t>(kMaxQuery + 1, 0)), 414},
      {client_.Request("GET", "/dns-query?dns=AAAA*AAA"), 400},   // outside the alphabet
      {client_.Request("GET", "/dns-query?dns=AAAAA"), 400},      // impossible length
      {client_.Request("GET", "/dns-query?ct=x"), 400},           // no dns=
      {client_.Request("GET", "/dns-query"), 400},
      {client_.Get(std::vector<uint8_t>(5, 0)), 400},              // shorter than a header
      {client_.Post(response_bit), 400},                           // QR=1
      {client_.Post({}), 400},                                     // empty body
      {client_.Request("GET", "/dns-query?dns=" + Base64Url(query),
                       {{"x-filler", std::string(9000, 'a')}}), 431},
  };
  client_.Pump(*server_);
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(StatusOf(cases[i].id), cases[i].status) << "case " << i;
    EXPECT_TRUE(client_.responses[cases[i].id].closed) << "case " << i;
  }
  EXPECT_EQ(client_.responses[cases[2].id].headers.at("allow"), "GET, POST");
  EXPECT_TRUE(sink_.queries.empty());
  EXPECT_EQ(server_->streams_in_use(), 0u);
  const DohServerStats& stats = server_->stats();
  EXPECT_EQ(stats.doh_status_404.load(), 2u);
  EXPECT_EQ(stats.doh_status_405.load(), 2u);
  EXPECT_EQ(stats.doh_status_415.load(), 2u);
  EXPECT_EQ(stats.doh_status_413.load(), 1u);
  EXPECT_EQ(stats.doh_status_414.load(), 1u);
  EXPECT_EQ(stats.doh_status_400.load(), 7u);
  EXPECT_EQ(stats.doh_status_431.load(), 1u);
  // The session is still good for real queries.
  const int32_t ok = client_.Get(query);
  client_.Pump(*server_);
  ASSERT_EQ(sink_.queries.size(), 1u);
  EXPECT_EQ(sink_.queries[0].first, ok);
}

TEST_F(DohServerSessionTest, OversizedBodyWithoutContentLengthIsRefusedAsItArrives) {
  // nghttp2 sends no content-length for a data provider: the server learns
  // the size only from the DATA frames.
  const std::vector<uint8_t> big(20000, 0);
  const int32_t id = client_.Post(big);
  client_.Pump(*server_);
  EXPECT_EQ(StatusOf(id), 413);
  EXPECT_TRUE(sink_.queries.empty());
  EXPECT_EQ(server_->streams_in_use(), 0u);
  EXPECT_TRUE(server_->alive());
}

TEST_F(DohServerSessionTest, CountsRequestsStillArriving) {
  // HEADERS without END_STREAM: the request is begun, its body not sent.
  nghttp2_nv nva[] = {
      {(uint8_t*)":method", (uint8_t*)"POST", 7, 4, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t*)":scheme", (uint8_t*)"https", 7, 5, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t*)":authority", (uint8_t*)"x", 10, 1, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t*)":path", (uint8_t*)"/dns-query", 5, 10, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t*)"content-type", (uint8_t*)"application/dns-message", 12, 23, NGHTTP2_NV_FLAG_NONE},
  };
  const int32_t id = nghttp2_submit_headers(client_.session_, NGHTTP2_FLAG_NONE, -1, nullptr, nva, 5, nullptr);
  client_.Pump(*server_);
  EXPECT_EQ(server_->requests_incomplete(), 1u);
  const std::vector<uint8_t> query = Query(0);
  nghttp2_data_provider provider{};
  struct Once {
    static ssize_t Read(nghttp2_session*, int32_t, uint8_t* buffer, size_t, uint32_t* flags,
                        nghttp2_data_source* source, void*) {
      auto* q = static_cast<const std::vector<uint8_t>*>(source->ptr);
      std::memcpy(buffer, q->data(), q->size());
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      return static_cast<ssize_t>(q->size());
    }
  };
  provider.source.ptr = const_cast<std::vector<uint8_t>*>(&query);
  provider.read_callback = Once::Read;
  ASSERT_EQ(nghttp2_submit_data(client_.session_, NGHTTP2_FLAG_END_STREAM, id, &provider), 0);
  client_.Pump(*server_);
  EXPECT_EQ(server_->requests_incomplete(), 0u);
  ASSERT_EQ(sink_.queries.size(), 1u);
  EXPECT_EQ(sink_.queries[0].second, query);
}

TEST_F(DohServerSessionTest, QueryEndedWithoutAnswerGets503) {
  const int32_t id = client_.Post(Query(0));
  client_.Pump(*server_);
  ASSERT_EQ(sink_.queries.size(), 1u);
  server_->QueryDone(id);
  client_.Pump(*server_);
  EXPECT_EQ(StatusOf(id), 503);
  EXPECT_EQ(server_->streams_in_use(), 0u);
}

TEST_F(DohServerSessionTest, StreamResetInFlightMakesTheAnswerANoOp) {
  const int32_t id = client_.Post(Query(0));
  client_.Pump(*server_);
  ASSERT_EQ(sink_.queries.size(), 1u);
  client_.Reset(id);
  client_.Pump(*server_);
  EXPECT_EQ(server_->stats().doh_reset_in_flight.load(), 1u);
  // The slot stays taken until the proxy ends the query.
  EXPECT_EQ(server_->streams_in_use(), 1u);
  EXPECT_EQ(server_->queries_in_flight(), 1u);
  EXPECT_FALSE(server_->Answer(id, AnswerFor(0, {60})));
  server_->QueryDone(id);
  client_.Pump(*server_);
  EXPECT_EQ(server_->streams_in_use(), 0u);
  EXPECT_EQ(server_->queries_in_flight(), 0u);
  EXPECT_EQ(server_->stats().doh_late_answers.load(), 1u);
  EXPECT_EQ(client_.responses[id].status, 0);
  EXPECT_EQ(client_.responses[id].close_error, static_cast<uint32_t>(NGHTTP2_CANCEL));
  EXPECT_TRUE(server_->alive());
}

TEST_F(DohServerSessionTest, ResetStreamsCannotMultiplyQueriesInFlight) {
  DohServerOptions options = Options();
  options.max_concurrent_streams = 2;
  Start(options);
  const int32_t a = client_.Post(Query(1));
  const int32_t b = client_.Post(Query(2));
  client_.Pump(*server_);
  client_.Reset(a);
  client_.Reset(b);
  client_.Pump(*server_);
  // Both queries are still out: a third stream finds no slot.
  const int32_t c = client_.Post(Query(3));
  client_.Pump(*server_);
  EXPECT_EQ(client_.responses[c].close_error, static_cast<uint32_t>(NGHTTP2_REFUSED_STREAM));
  EXPECT_EQ(server_->stats().doh_refused_streams.load(), 1u);
  EXPECT_EQ(sink_.queries.size(), 2u);
  server_->QueryDone(a);
  const int32_t d = client_.Post(Query(4));
  client_.Pump(*server_);
  ASSERT_EQ(sink_.queries.size(), 3u);
  EXPECT_EQ(sink_.queries[2].first, d);
}

TEST_F(DohServerSessionTest, AdvertisesBoundedConcurrentStreams) {
  client_.Pump(*server_);
  EXPECT_EQ(nghttp2_session_get_remote_settings(client_.session_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS),
            100u);
}

TEST_F(DohServerSessionTest, GarbageEndsTheSession) {
  const char garbage[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  EXPECT_EQ(server_->Receive({reinterpret_cast<const uint8_t*>(garbage), sizeof(garbage) - 1}),
            DohServerSession::ReceiveResult::kClose);
  EXPECT_FALSE(server_->alive());
  EXPECT_EQ(server_->stats().doh_protocol_errors.load(), 1u);
  EXPECT_FALSE(server_->Answer(1, AnswerFor(0, {60})));
}

TEST_F(DohServerSessionTest, BrokenFramingAfterThePrefaceEndsTheSession) {
  client_.Pump(*server_);  // preface and SETTINGS exchanged
  // A DATA frame on stream 0 is a connection error (RFC 9113 §6.1).
  const uint8_t frame[] = {0, 0, 4, 0x0, 0x0, 0, 0, 0, 0, 'a', 'b', 'c', 'd'};
  server_->Receive(frame);
  uint8_t out[1024];
  while (server_->WriteOutput(out) > 0) {
  }
  EXPECT_FALSE(server_->alive());
}

// RFC 9113 §6.8: the streams a client opened before its GOAWAY may still
// complete; the session ends once they have.
TEST_F(DohServerSessionTest, GoawayFromTheClientStillAnswersItsStreamsThenEnds) {
  const int32_t id = client_.Post(Query(0));
  const int32_t unanswered = client_.Get(Query(1));
  client_.Pump(*server_);
  ASSERT_EQ(server_->queries_in_flight(), 2u);
  client_.GoAway();
  client_.Pump(*server_);
  EXPECT_EQ(client_.last_receive_, static_cast<int>(DohServerSession::ReceiveResult::kGoingAway));
  EXPECT_EQ(server_->stats().doh_goaways.load(), 1u);
  EXPECT_TRUE(server_->alive());  // two streams still open
  const std::vector<uint8_t> answer = AnswerFor(0, {60});
  EXPECT_TRUE(server_->Answer(id, answer));
  server_->QueryDone(id);
  server_->QueryDone(unanswered);  // timed out upstream: 503
  client_.Pump(*server_);
  EXPECT_EQ(StatusOf(id), 200);
  EXPECT_EQ(client_.responses[id].body, answer);
  EXPECT_TRUE(client_.responses[id].closed);
  EXPECT_EQ(StatusOf(unanswered), 503);
  EXPECT_FALSE(server_->alive());  // nothing left: the connection can close
  EXPECT_EQ(server_->queries_in_flight(), 0u);
  // The slot can be reused by the next connection.
  server_->Reset();
  Client next;
  ASSERT_TRUE(server_->Start(&sink_).ok());
  const int32_t again = next.Get(Query(0));
  next.Pump(*server_);
  EXPECT_EQ(sink_.queries.back().first, again);
  EXPECT_EQ(server_->queries_in_flight(), 1u);
}

TEST_F(DohServerSessionTest, PoolTooSmallFailsTheSessionNotTheProcess) {
  DohServerOptions options = Options();
  options.pool_bytes = 16 * 1024;  // below what nghttp2's own buffers need
  server_ = std::make_unique<DohServerSession>(options);
  const absl::Status status = server_->Start(&sink_);
  if (status.ok()) {
    client_.Get(Query(0));
    client_.Pump(*server_);
    EXPECT_FALSE(server_->alive());
  }
  EXPECT_GT(server_->pool().failures(), 0u);
}

TEST(DohMaxAgeTest, SmallestAnswerTtl) {
  EXPECT_EQ(DohMaxAge(AnswerFor(0, {30, 600, 300})), 30u);
  EXPECT_EQ(DohMaxAge(AnswerFor(0, {0})), 0u);
  EXPECT_EQ(DohMaxAge(AnswerFor(0, {0x80000001})), 0u);  // RFC 2181 §8
}

TEST(DohMaxAgeTest, NegativeAnswerUsesTheSoa) {
  EXPECT_EQ(DohMaxAge(AnswerFor(0, {}, 3, 3600, 300)), 300u);  // NXDOMAIN: MINIMUM
  EXPECT_EQ(DohMaxAge(AnswerFor(0, {}, 0, 120, 900)), 120u);   // NODATA: the SOA's TTL
  EXPECT_EQ(DohMaxAge(AnswerFor(0, {45}, 0, 10, 10)), 45u);    // answers decide
}

TEST(DohMaxAgeTest, NothingToGoOnIsZero) {
  EXPECT_EQ(DohMaxAge(AnswerFor(0, {}, 2)), 0u);  // SERVFAIL
  EXPECT_EQ(DohMaxAge(AnswerFor(0, {})), 0u);     // NODATA without SOA
  std::vector<uint8_t> cut = AnswerFor(0, {60});
  cut.resize(cut.size() - 3);
  EXPECT_EQ(DohMaxAge(cut), 0u);
  EXPECT_EQ(DohMaxAge({}), 0u);
}

TEST(DecodeBase64UrlTest, DecodesAndRejects) {
  uint8_t out[8];
  EXPECT_EQ(DecodeBase64Url("AAEC", out), 3);
  EXPECT_EQ(out[0], 0);
  EXPECT_EQ(out[2], 2);
  EXPECT_EQ(DecodeBase64Url("_-8", out), 2);  // 0xff 0xef
  EXPECT_EQ(out[0], 0xff);
  EXPECT_EQ(out[1], 0xef);
  EXPECT_EQ(DecodeBase64Url("AAE=", out), 2);  // padding tolerated
  EXPECT_EQ(DecodeBase64Url("AA+C", out), -1);
  EXPECT_EQ(DecodeBase64Url("A", out), -1);
  EXPECT_EQ(DecodeBase64Url("AAAAAAAAAAAAAAAA", out), -2);
  EXPECT_EQ(DecodeBase64Url("", out), 0);
}

TEST(BoundedPoolTest, ReusesSplitsAndRefusesPastCapacity) {
  BoundedPool pool(4096);
  void* a = pool.Allocate(100);  // 128-byte block
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 16, 0u);
  pool.Free(a);
  EXPECT_EQ(pool.Allocate(100), a);  // same class, same block
  EXPECT_EQ(pool.Allocate(5000), nullptr);
  EXPECT_EQ(pool.failures(), 1u);
  void* big = pool.Allocate(2000);  // a 2048-byte block from the arena's end
  ASSERT_NE(big, nullptr);
  pool.Free(big);
  void* rest = pool.Allocate(1000);  // 1024, from the end (1920 bytes left there)
  ASSERT_NE(rest, nullptr);
  EXPECT_NE(pool.Allocate(400), nullptr);  // 512, the end's last full block
  // The end is used up: the freed 2048 block is split (512 + 512 + 1024).
  EXPECT_NE(pool.Allocate(400), nullptr);
  EXPECT_NE(pool.Allocate(400), nullptr);
  pool.Free(rest);
  pool.Free(rest);  // a second free is ignored, not a corrupt list
  EXPECT_NE(pool.Allocate(1000), nullptr);  // rest again
  EXPECT_NE(pool.Allocate(1000), nullptr);  // the split's upper half
  EXPECT_EQ(pool.Allocate(1000), nullptr);
  pool.Reset();
  EXPECT_EQ(pool.in_use(), 0u);
  EXPECT_NE(pool.Allocate(3000), nullptr);
}

}  // namespace
}  // namespace dotproxy::http
