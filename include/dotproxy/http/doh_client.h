#pragma once
// The client side of DNS over HTTPS (RFC 8484) as a sans-I/O HTTP/2 codec on
// nghttp2: plaintext in (Receive), plaintext out (Drain), no socket, no TLS.
// Each query is one POST stream; many streams share one connection within
// the peer's SETTINGS_MAX_CONCURRENT_STREAMS (nghttp2 holds the excess
// until streams close). Answers are reported by the caller's tag, never by
// DNS ID: queries go out with ID 0 (RFC 8484 §4.1).
//
// Shard thread only; owned by one upstream connection. Stream slots and
// their buffers are made at construction, and nghttp2 allocates through a
// per-codec recycling pool (RecyclingPool below), so a steady query stream
// does not reach malloc. Example:
//
//   DohClient client(settings, observer);
//   client.Start();                    // preface + SETTINGS queued
//   client.Submit(tag, query);         // one stream
//   client.Drain(plain_out);           // -> TLS write
//   client.Receive(plain_in);          // -> observer.OnResponse(tag, ...)

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"

struct nghttp2_session;
struct nghttp2_session_callbacks;
struct nghttp2_option;

namespace dotproxy::http {

// Largest DNS message in a DoH body: the DNS limit on streams (RFC 8484 §6
// leaves it to HTTP; we keep the DoT one so every transport agrees).
inline constexpr size_t kMaxDohMessage = 65535;

// Size-class free lists over blocks taken from malloc once and then reused:
// what nghttp2 frees comes back here, not to the heap. Memory grows to the
// peak that the codec's streams needed at once and is kept (bounded by the
// number of stream slots, nghttp2's per-stream state and its HPACK tables:
// a few KiB per stream), so after warm-up the query path does not allocate;
// DohClient stocks it for all its slots at its first Start.
// Blocks larger than the biggest class go to malloc and back every time
// (nghttp2 asks for those only at session creation: its inbound buffers).
class RecyclingPool {
 public:
  RecyclingPool() = default;
  RecyclingPool(const RecyclingPool&) = delete;
  RecyclingPool& operator=(const RecyclingPool&) = delete;
  ~RecyclingPool();

  void* Allocate(size_t size);
  void Free(void* block);
  void* Reallocate(void* block, size_t size);
  // Puts `count` blocks of `size`'s class on its free list now, so the
  // first `count` allocations of that class later do not reach malloc.
  void Reserve(size_t size, size_t count);

  // Calls that reached malloc (for tests); each is also counted in the
  // calling shard's heap_allocations (control::CountHeapAllocation).
  uint64_t system_allocations() const { return system_allocations_; }

 private:
  static constexpr int kClasses = 11;  // 32 B .. 32 KiB
  static constexpr size_t kHeader = 16;  // keeps max_align_t alignment
  struct FreeBlock {
    FreeBlock* next;
  };
  std::array<FreeBlock*, kClasses> free_{};
  uint64_t system_allocations_ = 0;
};

struct DohClientSettings {
  // :authority (the upstream's authentication name) and :path.
  std::string authority;
  std::string path = "/dns-query";
  // Streams in flight at once (slots made at construction); Submit refuses
  // more.
  size_t max_streams = 128;
};

class DohClient {
 public:
  // How a query's stream ended.
  enum class Result : uint8_t {
    kAnswer,          // 200, application/dns-message, a body of DNS size
    kHttpStatus,      // a status other than 200
    kBadContentType,  // 200 with another content-type
    kBadBody,         // empty, shorter than a DNS header, or over 65,535 bytes
    kReset,           // the server reset the stream (RST_STREAM)
    kRefused,         // never processed: above a GOAWAY's last stream ID, or
                      // REFUSED_STREAM; safe to retry elsewhere (RFC 9113 §8.7)
  };
  static const char* ToString(Result result);

  class Observer {
   public:
    virtual ~Observer() = default;
    // One query finished. `body` (kAnswer only) is the DNS answer as sent,
    // ID 0 included, borrowed until the call returns; the callee may modify
    // it. Called outside nghttp2 callbacks: Submit, Cancel and Reset are
    // allowed from here.
    virtual void OnResponse(uint16_t tag, Result result, int status,
                            std::span<uint8_t> body) = 0;
  };

  DohClient(DohClientSettings settings, Observer& observer);
  ~DohClient();
  DohClient(const DohClient&) = delete;
  DohClient& operator=(const DohClient&) = delete;

  // A fresh HTTP/2 session: the client preface and SETTINGS are queued for
  // the next Drain. Drops any previous session (as Reset).
  absl::Status Start();
  // Forgets the session and every stream without reporting them (the
  // connection reports its lost queries itself).
  void Reset();

  // Opens a stream for `query` (copied, its ID set to 0 in the copy) under
  // `tag`. False when every slot is taken, the tag is in use, the peer sent
  // GOAWAY, or the session refused the request.
  bool Submit(uint16_t tag, std::span<const uint8_t> query);
  // Abandons the query under `tag` (RST_STREAM CANCEL); nothing is reported.
  void Cancel(uint16_t tag);

  // Feeds plaintext from the server. False on a protocol error: the
  // connection must close (error() says why). Finished queries are reported
  // before it returns.
  bool Receive(std::span<const uint8_t> data);
  // Appends everything nghttp2 wants to send (frames of all streams) to
  // `out`, for one TLS write. False on a fatal session error.
  bool Drain(std::vector<uint8_t>& out);

  // True when Drain would produce bytes.
  bool WantsWrite() const;
  // The peer sent GOAWAY, or stream IDs ran out: no new streams here.
  bool going_away() const { return going_away_; }
  // The session has nothing more to do (after GOAWAY, all streams done).
  bool Finished() const;
  size_t active() const { return active_; }
  bool started() const { return session_ != nullptr; }
  const std::string& error() const { return error_; }
  // The peer's SETTINGS_MAX_CONCURRENT_STREAMS (or nghttp2's default).
  uint32_t peer_max_streams() const;
  const RecyclingPool& pool() const { return pool_; }

 private:
  struct Stream;
  static constexpr uint16_t kNoSlot = UINT16_MAX;

  friend struct Callbacks;  // nghttp2 callbacks (doh_client.cc)

  Stream* StreamOf(int32_t stream_id);
  void Finish(Stream& stream, Result result);
  void FreeSlot(Stream& stream);
  void Deliver();

  DohClientSettings settings_;
  Observer& observer_;
  RecyclingPool pool_;
  struct Allocator;  // nghttp2_mem over pool_
  std::unique_ptr<Allocator> allocator_;
  nghttp2_session_callbacks* callbacks_ = nullptr;
  nghttp2_option* option_ = nullptr;
  nghttp2_session* session_ = nullptr;
  std::vector<Stream> streams_;
  std::vector<uint16_t> free_slots_;
  std::vector<uint16_t> finished_;  // slots whose result awaits Deliver
  std::unique_ptr<uint16_t[]> slot_of_tag_;  // kNoSlot when the tag is free
  size_t active_ = 0;
  bool going_away_ = false;
  bool delivering_ = false;
  bool reserved_ = false;  // pool_ stocked for streams_ (first Start)
  uint64_t epoch_ = 0;  // bumped by Reset, so Deliver stops on a Reset inside a report
  std::string error_;
};

}  // namespace dotproxy::http
