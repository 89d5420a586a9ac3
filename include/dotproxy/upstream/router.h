#pragma once
// The seam between the forwarder and the upstream pool.
//
//   forwarder --Send(token, query)--> QueryRouter (the pool) --> a Connection
//   pool --OnAnswer(token, answer) / OnQueryLost(token)--> AnswerSink (the forwarder)
//
// A token is the forwarder's name for a query (its slot index); the pool
// stores it in a connection's ID table and hands it back, never looking
// inside. The forwarder keeps the Binding the pool returned, and hands it
// back to release or time out the query. Shard thread only.

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <span>

#include "dotproxy/dns/message.h"

namespace dotproxy::upstream {

inline constexpr uint32_t kNoConnection = UINT32_MAX;

// Where a query went: which upstream, which connection, which upstream ID.
struct Binding {
  int upstream = -1;
  uint32_t connection = kNoConnection;
  uint16_t id = 0;
  // The group's policy (a forward zone's `cache`): whether the answer may
  // be cached.
  bool cache_answers = true;

  bool bound() const { return connection != kNoConnection; }
};

class QueryRouter {
 public:
  virtual ~QueryRouter() = default;

  // Sends `query` (its ID field is overwritten with a fresh upstream ID) to
  // the best usable upstream of its group (the forward zone its question
  // name is in) other than `exclude` (-1: none), or to
  // `exclude` itself when `allow_excluded` and nothing else is usable. The
  // query is copied into the connection's batch: the caller's bytes may
  // change afterwards. False when nothing can take it now.
  virtual bool Send(uint32_t token, std::span<uint8_t> query, int exclude, bool allow_excluded,
                    Binding& binding) = 0;
  // The query no longer waits for this binding's answer (answered from
  // elsewhere, failed, retried): frees its ID and in-flight share.
  virtual void Release(uint32_t token, const Binding& binding) = 0;
  // The query's attempt at `binding` timed out: counts against that
  // upstream's health and the connection's liveness (a connection that
  // keeps timing out is closed, which reports its queries lost).
  // `counts_against_upstream`: also a failure for the upstream's health and
  // timeout counter (false when the query already had its count).
  virtual void NoteTimeout(const Binding& binding, bool counts_against_upstream) = 0;
  // Some upstream other than `exclude` could take `query` now. `query` (as
  // given to Send) names the upstream group, by its question name.
  virtual bool CanSendElsewhere(std::span<const uint8_t> query, int exclude) = 0;
  // Some connection of `query`'s group is up or being set up: waiting for
  // capacity makes sense.
  virtual bool AnyAlive(std::span<const uint8_t> query) const = 0;
  // The upstream group (forward zone) `query` goes to now; queries of one
  // group share its capacity. One group unless zones are configured.
  virtual uint32_t GroupOf(std::span<const uint8_t> /*query*/) const { return 0; }
  // The upstream a binding names, for dnstap: its address, this proxy's
  // end of the connection (null when unknown) and whether it is reached
  // over TLS, or plain UDP; false when unknown.
  virtual bool DescribeUpstream(const Binding& /*binding*/, const sockaddr** /*address*/,
                                const sockaddr** /*local*/, bool* /*tls*/, bool* /*udp*/) const {
    return false;
  }
};

class AnswerSink {
 public:
  virtual ~AnswerSink() = default;

  enum class Verdict : uint8_t {
    kAccepted,  // the answer to that query: the pool frees its binding
    kMismatch,  // another question: keep waiting (the right answer may come)
  };
  struct Outcome {
    Verdict verdict = Verdict::kMismatch;
    std::chrono::steady_clock::time_point sent_at{};  // of the accepted query
  };

  // An answer on a connection whose ID is bound to `token`. `answer` is in
  // the connection's buffer and may be patched in place. The sink reports
  // the upstream's edns-tcp-keepalive (100 ms units, RFC 7828) in
  // `keepalive` when the answer carries one. On kAccepted the sink has
  // dropped its binding: it must not Release it.
  virtual Outcome OnAnswer(uint32_t token, std::span<uint8_t> answer,
                           const dns::ResponseInfo& info, int* keepalive) = 0;
  // The connection carrying `token` closed before an answer; the pool has
  // already released the binding. `upstream_failed`: the connection failed
  // (as opposed to an orderly close by the upstream).
  virtual void OnQueryLost(uint32_t token, int upstream, bool upstream_failed) = 0;
};

}  // namespace dotproxy::upstream
