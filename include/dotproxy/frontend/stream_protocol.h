#pragma once
// The seam between the TLS room (TlsClients) and the plaintext protocol a
// connection speaks once TLS is terminated. The room owns the socket, the
// TLS session, the timers, the caps and the ciphertext; a StreamProtocol
// owns only the plaintext: it parses what the client sent into queries and
// turns answers into bytes to encrypt. Sans-I/O, one per connection slot,
// created when the room opens (Reset() between connections), shard thread
// only.
//
// Which protocol a listener speaks is chosen per listener (TlsListenerKind)
// together with its ALPN ("dot" for DoT; "h2" for DoH):
//
//   DoT (this room, DotProtocol below): DNS-over-TCP framing (RFC 7858 §3.3),
//     every query on stream 0, answers in any order.
//   DoH (http::DohServerSession, the DoH listener's codec): plug it in as a
//     StreamProtocol implementation (an adapter holding the codec), made by
//     the StreamProtocolFactory given to TlsClients::Open for listeners of
//     TlsListenerKind::kHttps (one per connection slot, at Open; the slot
//     uses it for connections accepted on an https listener and its
//     DotProtocol for the others). InputSpace/CommitInput feed it decrypted
//     bytes; it calls host.OnQuery(wire, stream_id) for each complete DNS
//     query (the HTTP/2 stream id becomes ClientRef::stream, so the answer
//     comes back to BeginAnswer/CommitAnswer with that id); Output() is its
//     pending HTTP/2 frames (SETTINGS, HEADERS, DATA, GOAWAY); Consumed()
//     tells it how much the room encrypted. QueryDone(stream) fires once per
//     query handed up, answered or not (an unanswered stream gets a 5xx or
//     RST_STREAM then).
//
// Back-pressure is the room's: it stops reading while queries_in_flight (its
// own count) or output_pending() pass the limits, and closes a connection
// whose BeginAnswer returns empty (the client does not read).

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>

namespace dotproxy::frontend {

enum class TlsListenerKind : uint8_t { kDot, kHttps };

// The ALPN a listener kind offers (ServerSession::Start).
constexpr std::string_view AlpnFor(TlsListenerKind kind) {
  return kind == TlsListenerKind::kDot ? "dot" : "h2";
}

class StreamProtocol {
 public:
  // Where complete queries go (the room, which adds the connection's
  // ClientRef and hands them to the forwarder). `wire` is borrowed for the
  // call; the sink may patch it in place.
  class Host {
   public:
    // False: the connection closed meanwhile (e.g. an answer given at once
    // did not fit): stop parsing and return Intake::kClosed.
    virtual bool OnQuery(std::span<uint8_t> wire, uint32_t stream) = 0;
    // True while the client may have no more queries in flight: a protocol
    // that can hold complete queries (DoT) stops handing them up and keeps
    // them for a later CommitInput(0). HTTP/2 bounds its streams itself.
    virtual bool AtQueryLimit() const { return false; }

   protected:
    ~Host() = default;
  };
  // kDone: the client is leaving (an HTTP/2 GOAWAY): answer what it asked,
  // then close (reading on only for what those answers need, such as
  // flow-control updates).
  enum class Intake : uint8_t { kOk, kDone, kError, kClosed };

  virtual ~StreamProtocol() = default;

  // A new connection on this slot: forget the previous one.
  virtual void Reset() = 0;
  // Plaintext intake: the room decrypts into InputSpace() (never empty while
  // the connection is readable), then CommitInput(n) parses and hands up
  // every complete query. kError: a protocol violation, the room closes.
  virtual std::span<uint8_t> InputSpace() = 0;
  virtual Intake CommitInput(size_t n, Host& host) = 0;
  // True while a message is started but incomplete (the room's message
  // timeout against slowloris).
  virtual bool mid_message() const = 0;
  // True while it holds a complete query it did not hand up (the host was
  // at its limit): CommitInput(0) hands it up before more is read.
  virtual bool holds_query() const { return false; }

  // Answers: space for an answer of at most `max_length` bytes on `stream`,
  // written in place; empty when it does not fit (the client is not reading).
  virtual std::span<uint8_t> BeginAnswer(uint32_t stream, size_t max_length) = 0;
  virtual void CommitAnswer(uint32_t stream, size_t length) = 0;
  virtual void QueryDone(uint32_t /*stream*/) {}

  // Plaintext to encrypt and send, then how much of it was taken.
  virtual std::span<const uint8_t> Output() = 0;
  virtual void Consumed(size_t n) = 0;
  size_t output_pending() { return Output().size(); }
  // Answer buffer capacity: reading pauses past a quarter of it queued.
  static constexpr size_t kOutCapacity = 96 * 1024;
};

// Makes one slot's protocol; `out` is the slot's answer buffer
// (kOutCapacity bytes, fixed for the room's life), which the protocol may use
// for its output or ignore. Called at Open, on the shard thread.
using StreamProtocolFactory = std::function<std::unique_ptr<StreamProtocol>(std::span<uint8_t> out)>;

}  // namespace dotproxy::frontend
