#pragma once
// The io_uring backend of io::Reactor. Private to src/io.

#include <memory>

#include "dotproxy/io/reactor.h"

namespace dotproxy::io {

class Ring;
class BufferRing;

class UringReactor final : public Reactor {
 public:
  static absl::StatusOr<std::unique_ptr<Reactor>> Create(const ReactorOptions& options);
  ~UringReactor() override;

  IoBackend backend() const override { return IoBackend::kUring; }
  void Recv(int fd, std::span<uint8_t> into, UserData data) override;
  void Send(int fd, std::span<const uint8_t> bytes, UserData data) override;
  void SendTo(int fd, std::span<const uint8_t> bytes, const sockaddr* to, socklen_t to_length,
              MessageHeader& header, UserData data) override;
  bool NoteSendToResult(int result) override;
  void Connect(int fd, const sockaddr* to, socklen_t to_length, UserData data) override;
  void AcceptMultishot(int fd, UserData data) override;
  void ReceiveDatagrams(int fd, UserData data) override;
  bool ReadDatagram(const Completion& completion, Datagram& datagram) override;
  void RecycleDatagram(uint16_t buffer_id) override;
  void CancelFd(int fd) override;
  void PublishBuffers() override;
  absl::Status SubmitAndWait(std::chrono::milliseconds timeout) override;
  absl::Status Submit() override;
  size_t Reap(absl::FunctionRef<void(const Completion&)> handle) override;

 private:
  UringReactor();

  std::unique_ptr<Ring> ring_;
  std::unique_ptr<BufferRing> buffers_;
  msghdr recv_template_{};
  bool sendto_supported_ = true;  // cleared on the first -EINVAL
};

}  // namespace dotproxy::io
