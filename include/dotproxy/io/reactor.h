#pragma once
// The I/O engine of one shard: rooms ask it for operations (receive, send,
// connect, accept, datagram intake) tagged with a UserData, and the shard's
// loop reaps completions and routes each to the room named by its Op. Rooms
// never see the backend, as in Seastar's reactor backends:
//   - io_uring (the default): SINGLE_ISSUER, DEFER_TASKRUN, multishot
//     receives on a provided-buffer ring, one submit per iteration;
//   - epoll (where io_uring is refused: default container seccomp profiles,
//     kernel.io_uring_disabled): edge-triggered readiness, recvmmsg into the
//     reactor's buffers, sendmmsg batches per socket at submit.
// Both give the same completions for the same operations.
//
// Lifetime: created, used and destroyed by the shard's own thread. Memory an
// operation points to (receive space, send bytes, MessageHeader) is borrowed
// until that operation's completion arrives. Operations take effect at the
// latest at the next Submit()/SubmitAndWait(), and their completions are
// delivered only by Reap(), never from inside the call that asked.

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dotproxy/io/user_data.h"

namespace dotproxy::io {

// One finished operation.
struct Completion {
  UserData data;
  int32_t result = 0;       // bytes, a new fd, or -errno
  bool more = false;        // a multishot operation (datagrams, accept) stays armed
  bool has_buffer = false;  // datagram intake: carries reactor buffer `buffer_id`
  uint16_t buffer_id = 0;
};

// A datagram delivered by ReceiveDatagrams. Borrows a reactor buffer until
// RecycleDatagram(buffer_id).
struct Datagram {
  std::span<uint8_t> payload;
  const sockaddr* source = nullptr;
  socklen_t source_length = 0;
  bool truncated = false;  // larger than the buffer (MSG_TRUNC): dropped by callers
  uint16_t buffer_id = 0;
  // When the kernel queued it on the socket (SO_TIMESTAMPNS, CLOCK_REALTIME
  // nanoseconds; see EnableReceiveTimestamps), 0 when the socket does not
  // stamp: how long it waited in the receive buffer.
  int64_t received_realtime_ns = 0;
  // How many datagrams the kernel had dropped on this socket (receive
  // buffer full) when it queued this one (SO_RXQ_OVFL); 0 when none ever.
  uint32_t socket_drops = 0;
};

// What the kernel attaches to a received datagram, from one control
// message: its receive stamp and the socket's drop count.
void ReadReceiveControl(const cmsghdr& c, Datagram& datagram);
void ReadReceiveControl(const msghdr& message, Datagram& datagram);
// Room a message's control data needs for both.
inline constexpr size_t kReceiveControlBytes =
    CMSG_SPACE(sizeof(timespec)) + CMSG_SPACE(sizeof(uint32_t));

// Storage a SendTo may need while in flight (io_uring's sendmsg fallback).
struct MessageHeader {
  msghdr message{};
  iovec iov{};
};

enum class IoBackend : uint8_t { kUring, kEpoll };
const char* ToString(IoBackend backend);

struct ReactorOptions {
  IoBackend backend = IoBackend::kUring;
  unsigned submission_entries = 4096;
  unsigned completion_entries = 16384;
  unsigned datagram_buffers = 2048;      // power of two
  // io_uring: header + source address + control data (receive stamp, drop
  // count: kReceiveControlBytes) + payload.
  unsigned datagram_buffer_size = 2048;
};

// Whether this process may use io_uring here: creates and drops a small
// ring. Returns 0, or the -errno of io_uring_queue_init (-EPERM under a
// seccomp profile or kernel.io_uring_disabled, -ENOSYS without io_uring).
int ProbeIoUring();

class Reactor {
 public:
  static absl::StatusOr<std::unique_ptr<Reactor>> Create(const ReactorOptions& options);
  virtual ~Reactor() = default;
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  virtual IoBackend backend() const = 0;

  // --- operations ---
  virtual void Recv(int fd, std::span<uint8_t> into, UserData data) = 0;
  // Stream send (MSG_NOSIGNAL). Keep one send in flight per socket: two sends
  // on one stream socket may complete out of order (io_uring).
  virtual void Send(int fd, std::span<const uint8_t> bytes, UserData data) = 0;
  // Datagram send to `to`. `header` must live until the completion.
  virtual void SendTo(int fd, std::span<const uint8_t> bytes, const sockaddr* to,
                      socklen_t to_length, MessageHeader& header, UserData data) = 0;
  // A SendTo completed with `result`: returns true (once) when the backend
  // had to change how it sends datagrams (io_uring before Linux 6.0).
  virtual bool NoteSendToResult(int result) = 0;
  virtual void Connect(int fd, const sockaddr* to, socklen_t to_length, UserData data) = 0;
  // Multishot accept: one completion per connection (result: the new fd,
  // non-blocking, close-on-exec) while `more`.
  virtual void AcceptMultishot(int fd, UserData data) = 0;
  // Multishot datagram intake into the reactor's buffers: read each
  // completion with ReadDatagram, then RecycleDatagram.
  virtual void ReceiveDatagrams(int fd, UserData data) = 0;
  virtual bool ReadDatagram(const Completion& completion, Datagram& datagram) = 0;
  virtual void RecycleDatagram(uint16_t buffer_id) = 0;
  // Cancels every operation on `fd`; their completions still arrive.
  virtual void CancelFd(int fd) = 0;
  // The owner is about to close `fd` and has seen the completions of all
  // its operations: the backend forgets it (epoll: leaves the epoll set, so
  // a socket opened later under the same number starts afresh, even when
  // `fd` was a duplicate of a socket that stays open). io_uring: nothing.
  virtual void Release(int fd) { (void)fd; }
  // `fd` is a datagram socket that other shards' reactors read too (one
  // inherited socket shared by all shards). Call before the first
  // operation on it. epoll: an exclusive wake-up (EPOLLEXCLUSIVE), so a
  // datagram wakes one waiting shard rather than all of them; io_uring:
  // nothing to do (a shard that loses the race re-polls inside the kernel).
  virtual void WatchSharedDatagrams(int fd) { (void)fd; }
  // Closing a socket with operations in flight: shut it down (so the peer
  // sees the close at once and blocked receives end) and cancel them. The
  // owner recycles it when their completions have arrived.
  void Abandon(int fd);

  // --- the loop ---
  // Hands recycled datagram buffers back, in bulk.
  virtual void PublishBuffers() = 0;
  // Submits queued operations and waits up to `timeout` for a completion.
  // Transient conditions (timeout, signal, busy) are OK; anything else is
  // returned so the caller can count it and stop spinning on it.
  virtual absl::Status SubmitAndWait(std::chrono::milliseconds timeout) = 0;
  virtual absl::Status Submit() = 0;
  // Calls `handle` for every completion ready now; returns how many.
  virtual size_t Reap(absl::FunctionRef<void(const Completion&)> handle) = 0;

 protected:
  Reactor() = default;
};

}  // namespace dotproxy::io
