#pragma once
// One send in flight on a stream socket, resumed after short writes. Two
// sends on one stream socket may complete out of order (liburing's
// examples/proxy.c explains why), so a room keeps one of these per socket
// and queues what comes meanwhile itself. The bytes are borrowed until
// OnComplete() says kComplete or kFailed. Owner thread only.
//
//   send_.Start(reactor, fd, bytes, tag);
//   ...on its completion:
//   switch (send_.OnComplete(reactor, fd, completion, tag)) { ... }

#include <cstddef>
#include <cstdint>
#include <span>

#include "dotproxy/io/reactor.h"
#include "dotproxy/io/user_data.h"

namespace dotproxy::io {

class StreamSend {
 public:
  enum class Result : uint8_t {
    kComplete,  // every byte went out
    kResumed,   // a short write: the rest is in flight again
    kFailed,    // the socket failed (-errno in the completion)
  };

  // REQUIRES: !in_flight(), bytes not empty.
  void Start(Reactor& reactor, int fd, std::span<const uint8_t> bytes, UserData tag) {
    bytes_ = bytes;
    sent_ = 0;
    in_flight_ = true;
    reactor.Send(fd, bytes_, tag);
  }

  Result OnComplete(Reactor& reactor, int fd, const Completion& completion, UserData tag) {
    in_flight_ = false;
    if (completion.result < 0) return Result::kFailed;
    sent_ += static_cast<size_t>(completion.result);
    if (sent_ >= bytes_.size()) return Result::kComplete;
    in_flight_ = true;
    reactor.Send(fd, bytes_.subspan(sent_), tag);
    return Result::kResumed;
  }

  // After a close the completion may never be routed back: forget it.
  void Reset() {
    bytes_ = {};
    sent_ = 0;
    in_flight_ = false;
  }

  bool in_flight() const { return in_flight_; }

 private:
  std::span<const uint8_t> bytes_;
  size_t sent_ = 0;
  bool in_flight_ = false;
};

}  // namespace dotproxy::io
