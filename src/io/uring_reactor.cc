#include "src/io/uring_reactor.h"

#include <liburing.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "src/io/ring.h"

namespace dotproxy::io {
namespace {
constexpr uint16_t kDatagramBufferGroup = 0;
}  // namespace

UringReactor::UringReactor() = default;

// The ring goes last: closing it cancels every operation still pointing into
// the buffers, and the buffer ring must be unregistered from a live ring.
UringReactor::~UringReactor() {
  buffers_.reset();
  ring_.reset();
}

int ProbeIoUring() {
  io_uring ring;
  const int rc = io_uring_queue_init(4, &ring, 0);
  if (rc < 0) return rc;
  io_uring_queue_exit(&ring);
  return 0;
}

absl::StatusOr<std::unique_ptr<Reactor>> UringReactor::Create(const ReactorOptions& options) {
  std::unique_ptr<UringReactor> reactor(new UringReactor());
  reactor->ring_ = std::make_unique<Ring>();
  if (auto status = reactor->ring_->Init(options.submission_entries, options.completion_entries);
      !status.ok()) {
    return status;
  }
  reactor->buffers_ = std::make_unique<BufferRing>();
  if (auto status = reactor->buffers_->Init(*reactor->ring_, kDatagramBufferGroup,
                                            options.datagram_buffers, options.datagram_buffer_size);
      !status.ok()) {
    return status;
  }
  // Every buffer reserves room for a full IPv6 source address.
  // Rounded up to 8: the control data follows the name in the buffer, and
  // its cmsghdr must be aligned (28 bytes would leave it at offset 44).
  reactor->recv_template_.msg_namelen = (sizeof(sockaddr_in6) + alignof(cmsghdr) - 1) &
                                        ~(alignof(cmsghdr) - 1);
  // ... and the receive timestamp.
  reactor->recv_template_.msg_controllen = kReceiveControlBytes;
  return std::unique_ptr<Reactor>(std::move(reactor));
}

void UringReactor::Recv(int fd, std::span<uint8_t> into, UserData data) {
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_recv(sqe, fd, into.data(), into.size(), 0);
  io_uring_sqe_set_data64(sqe, data.Pack());
}

void UringReactor::Send(int fd, std::span<const uint8_t> bytes, UserData data) {
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_send(sqe, fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, data.Pack());
}

void UringReactor::SendTo(int fd, std::span<const uint8_t> bytes, const sockaddr* to,
                     socklen_t to_length, MessageHeader& header, UserData data) {
  io_uring_sqe* sqe = ring_->GetSqe();
  if (sendto_supported_) {
    // IORING_OP_SEND with a destination (Linux 6.0+) is sendto: no msghdr
    // and iovec for the kernel to copy in, per datagram.
    io_uring_prep_send(sqe, fd, bytes.data(), bytes.size(), 0);
    io_uring_prep_send_set_addr(sqe, to, static_cast<uint16_t>(to_length));
  } else {
    header.iov = {const_cast<uint8_t*>(bytes.data()), bytes.size()};
    header.message = {};
    header.message.msg_name = const_cast<sockaddr*>(to);
    header.message.msg_namelen = to_length;
    header.message.msg_iov = &header.iov;
    header.message.msg_iovlen = 1;
    io_uring_prep_sendmsg(sqe, fd, &header.message, 0);
  }
  io_uring_sqe_set_data64(sqe, data.Pack());
}

bool UringReactor::NoteSendToResult(int result) {
  if (result != -EINVAL || !sendto_supported_) return false;
  // A kernel before 6.0 rejects a destination on IORING_OP_SEND: use sendmsg
  // from now on. The one datagram is lost (its client retries).
  sendto_supported_ = false;
  return true;
}

void UringReactor::Connect(int fd, const sockaddr* to, socklen_t to_length, UserData data) {
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_connect(sqe, fd, to, to_length);
  io_uring_sqe_set_data64(sqe, data.Pack());
}

void UringReactor::AcceptMultishot(int fd, UserData data) {
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_multishot_accept(sqe, fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, data.Pack());
}

void UringReactor::ReceiveDatagrams(int fd, UserData data) {
  // An empty buffer ring ends a multishot: hand back what was recycled first.
  buffers_->Publish();
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_recvmsg_multishot(sqe, fd, &recv_template_, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = buffers_->group_id();
  io_uring_sqe_set_data64(sqe, data.Pack());
}

bool UringReactor::ReadDatagram(const Completion& completion, Datagram& datagram) {
  if (completion.result <= 0 || !completion.has_buffer) return false;
  datagram.buffer_id = completion.buffer_id;
  uint8_t* buffer = buffers_->Buffer(datagram.buffer_id);
  io_uring_recvmsg_out* out =
      io_uring_recvmsg_validate(buffer, completion.result, &recv_template_);
  if (out == nullptr) {
    datagram.payload = {};
    datagram.source = nullptr;
    datagram.source_length = 0;
    datagram.truncated = true;  // cannot be read: treat as unusable
    return true;
  }
  datagram.truncated = (out->flags & MSG_TRUNC) != 0;
  datagram.payload = {static_cast<uint8_t*>(io_uring_recvmsg_payload(out, &recv_template_)),
                      io_uring_recvmsg_payload_length(out, completion.result, &recv_template_)};
  datagram.source = static_cast<const sockaddr*>(io_uring_recvmsg_name(out));
  datagram.source_length = std::min<socklen_t>(out->namelen, sizeof(sockaddr_in6));
  datagram.received_realtime_ns = 0;
  datagram.socket_drops = 0;
  for (cmsghdr* c = io_uring_recvmsg_cmsg_firsthdr(out, &recv_template_); c != nullptr;
       c = io_uring_recvmsg_cmsg_nexthdr(out, &recv_template_, c)) {
    ReadReceiveControl(*c, datagram);
  }
  return true;
}

void UringReactor::RecycleDatagram(uint16_t buffer_id) { buffers_->Recycle(buffer_id); }

void UringReactor::CancelFd(int fd) {
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
  io_uring_sqe_set_data64(sqe, UserData{Op::kCancel, 0, 0}.Pack());
}

void UringReactor::PublishBuffers() { buffers_->Publish(); }

namespace {
// Results of submit/wait that need no action: the wait timed out, a signal
// interrupted it, or the kernel is momentarily out of resources (completions
// must be reaped first, which the loop does next).
bool Transient(int result) {
  return result >= 0 || result == -ETIME || result == -EINTR || result == -EAGAIN ||
         result == -EBUSY;
}
}  // namespace

absl::Status UringReactor::SubmitAndWait(std::chrono::milliseconds timeout) {
  __kernel_timespec ts{};
  ts.tv_sec = timeout.count() / 1000;
  ts.tv_nsec = (timeout.count() % 1000) * 1000000;
  io_uring_cqe* cqe = nullptr;
  const int result = io_uring_submit_and_wait_timeout(ring_->get(), &cqe, 1, &ts, nullptr);
  if (Transient(result)) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("io_uring_submit_and_wait: ", std::strerror(-result)));
}

absl::Status UringReactor::Submit() {
  const int result = io_uring_submit(ring_->get());
  if (Transient(result)) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("io_uring_submit: ", std::strerror(-result)));
}

size_t UringReactor::Reap(absl::FunctionRef<void(const Completion&)> handle) {
  io_uring* ring = ring_->get();
  unsigned head;
  unsigned seen = 0;
  io_uring_cqe* cqe;
  io_uring_for_each_cqe(ring, head, cqe) {
    ++seen;
    Completion completion;
    completion.data = UserData::Unpack(cqe->user_data);
    completion.result = cqe->res;
    completion.more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    completion.has_buffer = (cqe->flags & IORING_CQE_F_BUFFER) != 0;
    completion.buffer_id = static_cast<uint16_t>(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    handle(completion);
  }
  io_uring_cq_advance(ring, seen);
  // With DEFER_TASKRUN an overflowed CQ is flushed only on request.
  if (io_uring_cq_has_overflow(ring)) io_uring_get_events(ring);
  return seen;
}

}  // namespace dotproxy::io
