#pragma once
// The epoll backend of io::Reactor, for hosts that refuse io_uring (Docker
// >= 25, containerd 2.0 and podman default seccomp profiles, Linux 6.6+
// kernel.io_uring_disabled). Private to src/io.
//
// Edge-triggered: every socket is added to the epoll set once, for input
// and output, and the reactor remembers whether it is readable/writable
// until a call returns EAGAIN. Level-triggered would need an epoll_ctl per
// operation to stop reporting sockets with nothing to do (a listener with a
// full client table, a TCP client paused by back-pressure); edge-triggered
// costs one epoll_wait per loop iteration and the I/O calls themselves.
// UDP intake is recvmmsg into the reactor's buffers (one call per batch);
// UDP replies queued during an iteration leave as one sendmmsg per socket at
// submit. Completions are queued and delivered by Reap(), as io_uring's.
// Nothing allocates per operation: tables are sized at creation (the fd
// table grows only when the kernel hands out a higher fd number).

#include <sys/epoll.h>
#include <sys/socket.h>

#include <memory>
#include <vector>

#include "dotproxy/io/reactor.h"
#include "dotproxy/io/socket.h"

namespace dotproxy::io {

class EpollReactor final : public Reactor {
 public:
  static absl::StatusOr<std::unique_ptr<Reactor>> Create(const ReactorOptions& options);
  ~EpollReactor() override = default;

  IoBackend backend() const override { return IoBackend::kEpoll; }
  void Recv(int fd, std::span<uint8_t> into, UserData data) override;
  void Send(int fd, std::span<const uint8_t> bytes, UserData data) override;
  void SendTo(int fd, std::span<const uint8_t> bytes, const sockaddr* to, socklen_t to_length,
              MessageHeader& header, UserData data) override;
  bool NoteSendToResult(int) override { return false; }
  void Connect(int fd, const sockaddr* to, socklen_t to_length, UserData data) override;
  void AcceptMultishot(int fd, UserData data) override;
  void ReceiveDatagrams(int fd, UserData data) override;
  bool ReadDatagram(const Completion& completion, Datagram& datagram) override;
  void RecycleDatagram(uint16_t buffer_id) override;
  void CancelFd(int fd) override;
  void Release(int fd) override;
  void WatchSharedDatagrams(int fd) override;
  void PublishBuffers() override;
  absl::Status SubmitAndWait(std::chrono::milliseconds timeout) override;
  absl::Status Submit() override;
  size_t Reap(absl::FunctionRef<void(const Completion&)> handle) override;

 private:
  // Messages per recvmmsg/sendmmsg call.
  static constexpr unsigned kBatch = 64;

  // What the reactor knows of one fd. At most one pending operation of each
  // kind: the rooms keep one receive and one send in flight per socket.
  struct FdState {
    bool watched = false;   // in the epoll set
    bool readable = false;  // edge-triggered readiness, cleared on EAGAIN
    bool writable = true;   // a fresh socket can take bytes (connecting: false)
    bool queued = false;    // on work_: attempt its operations at submit
    bool recv = false;
    bool send = false;
    bool connect = false;
    bool accept = false;
    bool datagrams = false;
    std::span<uint8_t> recv_into;
    std::span<const uint8_t> send_bytes;
    UserData recv_tag, send_tag, connect_tag, accept_tag, datagram_tag;
  };
  struct BufferMeta {
    sockaddr_in6 source{};
    socklen_t source_length = 0;
    uint32_t length = 0;
    bool truncated = false;
    int64_t received_realtime_ns = 0;
    uint32_t socket_drops = 0;
    alignas(cmsghdr) uint8_t control[kReceiveControlBytes];
  };
  struct Outbound {
    int fd;
    std::span<const uint8_t> bytes;
    const sockaddr* to;
    socklen_t to_length;
    UserData tag;
  };

  explicit EpollReactor(const ReactorOptions& options);
  FdState& State(int fd);
  // A fresh state for a new socket, added to the epoll set.
  FdState& Adopt(int fd);
  // The state of a socket we may not have seen yet (adopted on first use).
  FdState& Watched(int fd);
  void Queue(int fd);
  void Perform(int fd);
  void DoRecv(int fd, FdState& state);
  void DoSend(int fd, FdState& state);
  void DoConnect(int fd, FdState& state);
  void DoAccept(int fd, FdState& state);
  void DoDatagrams(int fd, FdState& state);
  void FlushDatagrams();
  void RunQueued();
  void Post(UserData data, int result, bool more = false);

  UniqueFd epoll_;
  std::vector<FdState> fds_;
  std::vector<int> work_;
  std::vector<int> running_;
  std::vector<Completion> completions_;
  std::vector<Completion> reaping_;
  bool starved_ = false;  // datagram intake waits for buffers
  std::vector<int> datagram_fds_;

  unsigned buffer_size_;
  std::unique_ptr<uint8_t[]> buffers_;
  std::vector<BufferMeta> meta_;
  std::vector<uint16_t> free_buffers_;
  std::vector<uint16_t> batch_buffers_;

  std::vector<Outbound> outbound_;
  std::vector<int> outbound_fds_;
  mmsghdr mmsg_[kBatch];
  iovec iov_[kBatch];
  size_t mmsg_owner_[kBatch];
  epoll_event events_[256];
};

}  // namespace dotproxy::io
