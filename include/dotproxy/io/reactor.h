#pragma once
// The I/O engine of one shard: rooms ask it for operations (receive, send,
// connect, accept, datagram intake) tagged with a UserData, and the shard's
// loop reaps completions and routes each to the room named by its Op. Rooms
// never see the backend: today io_uring (SINGLE_ISSUER, DEFER_TASKRUN,
// multishot receives on a provided-buffer ring); the interface is what a
// second backend (epoll + recvmmsg/sendmmsg) implements. No room includes
// liburing.
//
// Lifetime: created, used and destroyed by the shard's own thread. Memory an
// operation points to (receive space, send bytes, MessageHeader) is borrowed
// until that operation's completion arrives. Operations are queued and go to
// the kernel at the next Submit()/SubmitAndWait(): one submit per iteration.

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dotproxy/io/user_data.h"

namespace dotproxy::io {

class Ring;
class BufferRing;

// One finished operation.
struct Completion {
  UserData data;
  int32_t result = 0;  // bytes, a new fd, or -errno
  uint32_t flags = 0;  // backend flags; ask more() / the reactor
  // A multishot operation (datagram intake, accept) stays armed.
  bool more() const;
};

// A datagram delivered by ReceiveDatagrams. Borrows a reactor buffer until
// RecycleDatagram(buffer_id).
struct Datagram {
  std::span<uint8_t> payload;
  const sockaddr* source = nullptr;
  socklen_t source_length = 0;
  bool truncated = false;  // larger than the buffer (MSG_TRUNC): dropped by callers
  uint16_t buffer_id = 0;
};

// Storage a SendTo may need while in flight (the sendmsg fallback's header).
struct MessageHeader {
  msghdr message{};
  iovec iov{};
};

struct ReactorOptions {
  unsigned submission_entries = 4096;
  unsigned completion_entries = 16384;
  unsigned datagram_buffers = 2048;     // power of two
  unsigned datagram_buffer_size = 2048;  // header + source address + payload
};

class Reactor {
 public:
  static absl::StatusOr<std::unique_ptr<Reactor>> Create(const ReactorOptions& options);
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  // --- operations (queued until the next submit) ---
  void Recv(int fd, std::span<uint8_t> into, UserData data);
  // Stream send (MSG_NOSIGNAL). Keep one send in flight per socket: two sends
  // on one stream socket may complete out of order.
  void Send(int fd, std::span<const uint8_t> bytes, UserData data);
  // Datagram send to `to`. `header` is used only by the fallback for kernels
  // without IORING_OP_SEND addresses; it must live until the completion.
  void SendTo(int fd, std::span<const uint8_t> bytes, const sockaddr* to, socklen_t to_length,
              MessageHeader& header, UserData data);
  // A SendTo completed with `result`: returns true (once) when the kernel
  // rejected sendto-style sends and the reactor switched to sendmsg.
  bool NoteSendToResult(int result);
  void Connect(int fd, const sockaddr* to, socklen_t to_length, UserData data);
  // Multishot accept: one completion per connection (result: the new fd,
  // non-blocking, close-on-exec) while more().
  void AcceptMultishot(int fd, UserData data);
  // Multishot datagram intake into the reactor's buffers: read each
  // completion with ReadDatagram, then RecycleDatagram.
  void ReceiveDatagrams(int fd, UserData data);
  bool ReadDatagram(const Completion& completion, Datagram& datagram);
  void RecycleDatagram(uint16_t buffer_id);
  // Cancels every operation on `fd`; their completions still arrive.
  void CancelFd(int fd);
  // Closing a socket with operations in flight: shut it down (so the peer
  // sees the close at once and blocked receives end) and cancel them. The
  // owner recycles it when their completions have arrived.
  void Abandon(int fd);

  // --- the loop ---
  // Hands recycled datagram buffers back to the kernel, in bulk.
  void PublishBuffers();
  // Submits queued operations and waits up to `timeout` for one completion.
  // Transient conditions (timeout, signal, busy) are OK; anything else is
  // returned so the caller can count it and stop spinning on it.
  absl::Status SubmitAndWait(std::chrono::milliseconds timeout);
  absl::Status Submit();
  // Calls `handle` for every completion ready now; returns how many.
  size_t Reap(absl::FunctionRef<void(const Completion&)> handle);

 private:
  Reactor();

  std::unique_ptr<Ring> ring_;
  std::unique_ptr<BufferRing> buffers_;
  msghdr recv_template_{};
  bool sendto_supported_ = true;  // cleared on the first -EINVAL
};

}  // namespace dotproxy::io
