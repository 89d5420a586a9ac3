#pragma once
// The server side of DNS over HTTPS (RFC 8484) on one HTTP/2 connection,
// sans I/O: plaintext in (Receive), plaintext out (WriteOutput); whoever owns
// the connection (the TLS front end) moves the bytes. Each valid request's
// DNS query goes to a DohQuerySink with its stream id; the answer comes back
// by stream id (Answer), and every query handed up ends with QueryDone.
//
//   DohServerSession session(options);        // once per connection slot
//   session.Start(&sink);                     // connection accepted
//   session.Receive(plaintext);               // -> sink.OnDohQuery(id, wire)
//   session.Answer(id, answer); session.QueryDone(id);
//   n = session.WriteOutput(buffer);          // -> TLS
//   if (!session.alive()) { flush, close; session.Reset(); }
//
// Requests: GET PATH?dns=<base64url> and POST PATH with content-type
// application/dns-message (PATH default /dns-query). Errors are HTTP
// statuses: 404 other path, 405 other method, 415 other content type, 413
// body over max_query_bytes (frontend::kMaxQuerySize), 414 a dns= parameter that decodes to
// more, 400 missing or bad dns= parameter, an empty body or a message that
// is not a DNS query (shorter than a header, or QR=1), 431 headers over the
// limit, 503 a query the proxy ended without an answer. HTTP/2 only (the
// TLS front end offers ALPN "h2" alone); no HTTP/1.1.
//
// Memory: nghttp2 allocates through a per-connection BoundedPool
// (nghttp2_session_server_new3 with an nghttp2_mem over it), and the
// answers waiting to be framed are copied into the same pool, so nothing
// here calls malloc after construction, and a connection's memory is
// bounded by DohServerOptions::pool_bytes whatever its peer does. Shard
// thread only; the sink is called from inside Receive only.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "dotproxy/http/doh_counters.h"

struct nghttp2_session;
struct nghttp2_option;

namespace dotproxy::http {

class BoundedPool;

// The counters (doh_counters.h), bound by reference to the shard's
// metrics::ShardStats rows of the same names (Envoy's counters-as-a-struct-
// of-references). Single writer, the shard thread: relaxed load + store.
struct DohServerStats {
#define DOTPROXY_DOH_REFERENCE(name, help) std::atomic<uint64_t>& name;
  DOTPROXY_DOH_SERVER_COUNTERS(DOTPROXY_DOH_REFERENCE)
#undef DOTPROXY_DOH_REFERENCE
};

// Storage for the counters where there is no ShardStats (tests, a session
// given none).
struct DohServerCounters {
#define DOTPROXY_DOH_STORAGE(name, help) std::atomic<uint64_t> name{0};
  DOTPROXY_DOH_SERVER_COUNTERS(DOTPROXY_DOH_STORAGE)
#undef DOTPROXY_DOH_STORAGE
  DohServerStats Refs() {
#define DOTPROXY_DOH_BIND(name, help) name,
    return DohServerStats{DOTPROXY_DOH_SERVER_COUNTERS(DOTPROXY_DOH_BIND)};
#undef DOTPROXY_DOH_BIND
  }
};

struct DohServerOptions {
  std::string path = "/dns-query";
  // SETTINGS_MAX_CONCURRENT_STREAMS, and the number of stream slots (each
  // holds one query of up to frontend::kMaxQuerySize). A stream reset by
  // the client keeps its slot until the proxy ends its query, so resets
  // cannot multiply the queries in flight.
  uint32_t max_concurrent_streams = 100;
  // Largest DNS query accepted (body or decoded dns=); the front end sets
  // frontend::kMaxQuerySize (not included here: frontend depends on http).
  size_t max_query_bytes = 1024;
  // Sum of a request's header names and values (HPACK-decoded).
  size_t max_header_bytes = 8 * 1024;
  // The per-connection pool for nghttp2 and pending answers; reserved, and
  // committed only as it is touched. A 64 KiB answer takes a 128 KiB block;
  // nghttp2 itself used 85 KiB with 100 streams open (doh_server_test).
  size_t pool_bytes = 512 * 1024;
  const DohServerStats* stats = nullptr;  // may be null: counted in the session's own
};

// Receives each valid request's DNS query. `wire` is the session's copy,
// valid for the call (the sink may patch it in place, e.g. the ID).
class DohQuerySink {
 public:
  virtual ~DohQuerySink() = default;
  virtual void OnDohQuery(int32_t stream_id, std::span<uint8_t> wire) = 0;
};

// The HTTP freshness lifetime for a DNS answer (RFC 8484 §5.1): the smallest
// TTL in the answer section; with no answer records, the negative-caching
// TTL of an SOA in the authority section (min of its TTL and MINIMUM, RFC
// 2308 §5); otherwise (errors, NODATA without SOA) 0. Also 0 for an answer
// that does not parse.
uint32_t DohMaxAge(std::span<const uint8_t> answer);

// Decodes base64url without padding (a trailing '=' or two is tolerated).
// Returns the decoded length, or -1 for a character outside the alphabet or
// an impossible length, or -2 when it does not fit `out`.
int DecodeBase64Url(std::string_view text, std::span<uint8_t> out);

class DohServerSession {
 public:
  enum class ReceiveResult : uint8_t {
    kOk,
    // The client sent GOAWAY (RFC 9113 §6.8): it opens no more streams, and
    // those it opened still get their answers. Answer what is in flight,
    // write what is left, then close (alive() turns false once all closed).
    kGoingAway,
    kClose,  // broken framing or out of memory: write what is left, then close
  };

  explicit DohServerSession(const DohServerOptions& options);
  ~DohServerSession();
  DohServerSession(const DohServerSession&) = delete;
  DohServerSession& operator=(const DohServerSession&) = delete;

  // A new connection: creates the nghttp2 session and queues the server
  // SETTINGS. REQUIRES: not started, or Reset() since.
  absl::Status Start(DohQuerySink* sink);
  // The connection is gone: drops the nghttp2 session and every stream;
  // later Answer/QueryDone calls for its streams are no-ops.
  void Reset();

  // Plaintext from the client. May call the sink.
  ReceiveResult Receive(std::span<const uint8_t> bytes);
  // Copies pending plaintext for the client into `out`; returns the bytes
  // written (0: nothing pending). Call until it returns less than out.size().
  size_t WriteOutput(std::span<uint8_t> out);
  bool has_output() const;
  // False once both sides are done (after a GOAWAY either way, or a
  // protocol error): write what WriteOutput still gives, then close.
  bool alive() const;

  // The answer to the query handed up as `stream_id`: a 200 response with
  // content-type, content-length and cache-control max-age (DohMaxAge). A
  // no-op (false) when the stream is gone (reset by the client, session
  // ended) or already answered; false too when the pool cannot hold it
  // (the stream then gets 503 at QueryDone).
  bool Answer(int32_t stream_id, std::span<const uint8_t> wire);
  // Ends the query handed up as `stream_id`, answered or not (without an
  // answer the stream gets 503). Frees its slot once the stream has closed.
  void QueryDone(int32_t stream_id);

  // Queries handed up and not yet QueryDone (reset streams included).
  uint32_t queries_in_flight() const { return queries_in_flight_; }
  uint32_t streams_in_use() const { return slots_in_use_; }
  // Requests begun (HEADERS seen) whose query is not complete yet: the
  // front end's message timeout (slowloris) runs while this is not 0.
  uint32_t requests_incomplete() const;
  const BoundedPool& pool() const { return *pool_; }
  const DohServerStats& stats() const { return stats_; }

 private:
  struct Stream;
  friend struct DohCallbacks;

  Stream* FindStream(int32_t stream_id);
  Stream* TakeSlot(int32_t stream_id);
  void ReleaseIfDone(Stream& stream);
  void OnHeader(Stream& stream, std::string_view name, std::string_view value);
  void OnHeadersEnd(Stream& stream);
  void OnRequestEnd(Stream& stream);
  void OnBody(Stream& stream, std::span<const uint8_t> data);
  void OnStreamClose(int32_t stream_id);
  void RespondError(Stream& stream, int status);
  void Fail();

  DohServerOptions options_;
  DohServerCounters own_counters_;
  DohServerStats stats_;
  std::unique_ptr<BoundedPool> pool_;
  nghttp2_option* option_ = nullptr;
  nghttp2_session* session_ = nullptr;
  DohQuerySink* sink_ = nullptr;
  std::vector<Stream> slots_;
  // max_query_bytes per slot, not value-initialised: committed as used.
  std::unique_ptr<uint8_t[]> query_bytes_;
  std::vector<uint32_t> free_slots_;
  uint32_t slots_in_use_ = 0;
  uint32_t queries_in_flight_ = 0;
  bool failed_ = false;
  bool client_going_away_ = false;  // the client sent GOAWAY
  // A chunk nghttp2_session_mem_send returned that did not fit the last
  // WriteOutput: valid until the next mem_send.
  const uint8_t* pending_ = nullptr;
  size_t pending_length_ = 0;
};

}  // namespace dotproxy::http
