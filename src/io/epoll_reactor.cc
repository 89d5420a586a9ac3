#include "src/io/epoll_reactor.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace dotproxy::io {

EpollReactor::EpollReactor(const ReactorOptions& options)
    : buffer_size_(options.datagram_buffer_size),
      buffers_(new uint8_t[size_t{options.datagram_buffers} * options.datagram_buffer_size]),
      meta_(options.datagram_buffers) {
  // Sized so that steady-state operation never grows them.
  rlimit files{};
  size_t fd_slots = 4096;
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY) {
    fd_slots = std::clamp<size_t>(files.rlim_cur, 1024, 65536);
  }
  fds_.resize(fd_slots);
  work_.reserve(fd_slots);
  running_.reserve(fd_slots);
  const size_t completions = size_t{options.completion_entries} + options.datagram_buffers;
  completions_.reserve(completions);
  reaping_.reserve(completions);
  free_buffers_.reserve(options.datagram_buffers);
  for (unsigned id = options.datagram_buffers; id-- > 0;) {
    free_buffers_.push_back(static_cast<uint16_t>(id));
  }
  batch_buffers_.reserve(kBatch);
  outbound_.reserve(options.submission_entries);
  outbound_fds_.reserve(16);
  datagram_fds_.reserve(16);
}

absl::StatusOr<std::unique_ptr<Reactor>> EpollReactor::Create(const ReactorOptions& options) {
  std::unique_ptr<EpollReactor> reactor(new EpollReactor(options));
  reactor->epoll_ = UniqueFd(epoll_create1(EPOLL_CLOEXEC));
  if (!reactor->epoll_) {
    return absl::UnavailableError(absl::StrCat("epoll_create1: ", std::strerror(errno)));
  }
  return std::unique_ptr<Reactor>(std::move(reactor));
}

EpollReactor::FdState& EpollReactor::State(int fd) {
  if (static_cast<size_t>(fd) >= fds_.size()) fds_.resize(static_cast<size_t>(fd) * 2);
  return fds_[fd];
}

EpollReactor::FdState& EpollReactor::Adopt(int fd) {
  FdState& state = State(fd);
  state = FdState{};
  epoll_event event{};
  event.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  event.data.fd = fd;
  // The number may still be in the set if its previous socket was never
  // closed through us: then refresh it.
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) != 0 && errno == EEXIST) {
    epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &event);
  }
  state.watched = true;
  return state;
}

EpollReactor::FdState& EpollReactor::Watched(int fd) {
  return State(fd).watched ? fds_[fd] : Adopt(fd);
}

void EpollReactor::Queue(int fd) {
  FdState& state = fds_[fd];
  if (state.queued) return;
  state.queued = true;
  work_.push_back(fd);
}

void EpollReactor::Post(UserData data, int result, bool more) {
  Completion completion;
  completion.data = data;
  completion.result = result;
  completion.more = more;
  completions_.push_back(completion);
}

// --- operations: recorded now, attempted at submit or on readiness ---

void EpollReactor::Recv(int fd, std::span<uint8_t> into, UserData data) {
  FdState& state = Watched(fd);
  state.recv = true;
  state.recv_into = into;
  state.recv_tag = data;
  if (state.readable) Queue(fd);
}

void EpollReactor::Send(int fd, std::span<const uint8_t> bytes, UserData data) {
  FdState& state = Watched(fd);
  state.send = true;
  state.send_bytes = bytes;
  state.send_tag = data;
  if (state.writable) Queue(fd);
}

void EpollReactor::SendTo(int fd, std::span<const uint8_t> bytes, const sockaddr* to,
                          socklen_t to_length, MessageHeader&, UserData data) {
  outbound_.push_back({fd, bytes, to, to_length, data});
}

void EpollReactor::Connect(int fd, const sockaddr* to, socklen_t to_length, UserData data) {
  FdState& state = Adopt(fd);  // a new socket
  if (::connect(fd, to, to_length) == 0) {
    Post(data, 0);
    return;
  }
  if (errno != EINPROGRESS) {
    Post(data, -errno);
    return;
  }
  // Writable once connected (or failed): see DoConnect.
  state.connect = true;
  state.connect_tag = data;
  state.writable = false;
}

void EpollReactor::AcceptMultishot(int fd, UserData data) {
  FdState& state = Watched(fd);
  state.accept = true;
  state.accept_tag = data;
  state.readable = true;  // connections may be waiting since before we watched
  Queue(fd);
}

void EpollReactor::ReceiveDatagrams(int fd, UserData data) {
  FdState& state = Watched(fd);
  state.datagrams = true;
  state.datagram_tag = data;
  state.readable = true;  // datagrams may be queued since before we watched
  if (std::find(datagram_fds_.begin(), datagram_fds_.end(), fd) == datagram_fds_.end()) {
    datagram_fds_.push_back(fd);
  }
  Queue(fd);
}

bool EpollReactor::ReadDatagram(const Completion& completion, Datagram& datagram) {
  if (!completion.has_buffer) return false;
  BufferMeta& meta = meta_[completion.buffer_id];
  datagram.buffer_id = completion.buffer_id;
  datagram.payload = {buffers_.get() + size_t{completion.buffer_id} * buffer_size_,
                      std::min<size_t>(meta.length, buffer_size_)};
  datagram.source = reinterpret_cast<const sockaddr*>(&meta.source);
  datagram.source_length = meta.source_length;
  datagram.truncated = meta.truncated;
  datagram.received_realtime_ns = meta.received_realtime_ns;
  datagram.socket_drops = meta.socket_drops;
  return true;
}

void EpollReactor::RecycleDatagram(uint16_t buffer_id) { free_buffers_.push_back(buffer_id); }

void EpollReactor::PublishBuffers() {
  if (!starved_ || free_buffers_.empty()) return;
  starved_ = false;
  for (int fd : datagram_fds_) {
    if (fds_[fd].datagrams && fds_[fd].readable) Queue(fd);
  }
}

void EpollReactor::CancelFd(int fd) {
  if (static_cast<size_t>(fd) >= fds_.size()) return;
  FdState& state = fds_[fd];
  if (state.recv) Post(state.recv_tag, -ECANCELED);
  if (state.send) Post(state.send_tag, -ECANCELED);
  if (state.connect) Post(state.connect_tag, -ECANCELED);
  if (state.accept) Post(state.accept_tag, -ECANCELED);
  if (state.datagrams) Post(state.datagram_tag, -ECANCELED);
  state.recv = state.send = state.connect = state.accept = state.datagrams = false;
}

void EpollReactor::Release(int fd) {
  if (fd < 0 || static_cast<size_t>(fd) >= fds_.size() || !fds_[fd].watched) return;
  // Needed for duplicates: the kernel drops an epoll registration only when
  // the last descriptor of the socket closes.
  epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  fds_[fd] = FdState{};  // a stale entry on work_ finds nothing to do
  datagram_fds_.erase(std::remove(datagram_fds_.begin(), datagram_fds_.end(), fd),
                      datagram_fds_.end());
}

void EpollReactor::WatchSharedDatagrams(int fd) {
  FdState& state = State(fd);
  state = FdState{};
  // Input only: replies leave through sendmmsg without waiting for
  // readiness. EPOLLEXCLUSIVE wakes one of the shards waiting on the socket;
  // a busy shard's registration is still marked ready without counting as
  // the wake-up, so an idle shard is woken too and nothing waits unseen.
  // Every woken shard reads until EAGAIN (edge-triggered), as for its own
  // sockets; a shard that loses the race gets EAGAIN and waits for the next
  // edge.
  epoll_event event{};
  event.events = EPOLLIN | EPOLLET | EPOLLEXCLUSIVE;
  event.data.fd = fd;
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) != 0 && errno == EEXIST) {
    // EPOLLEXCLUSIVE cannot be set by EPOLL_CTL_MOD.
    epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
    epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event);
  }
  state.watched = true;
}

// --- attempts ---

void EpollReactor::Perform(int fd) {
  // fds_[fd] is read afresh each time: accepting may grow the table.
  if (fds_[fd].connect && fds_[fd].writable) DoConnect(fd, fds_[fd]);
  if (fds_[fd].send && fds_[fd].writable) DoSend(fd, fds_[fd]);
  if (fds_[fd].recv && fds_[fd].readable) DoRecv(fd, fds_[fd]);
  if (fds_[fd].accept && fds_[fd].readable) DoAccept(fd, fds_[fd]);
  if (fds_[fd].datagrams && fds_[fd].readable) DoDatagrams(fd, fds_[fd]);
}

void EpollReactor::DoRecv(int fd, FdState& state) {
  const ssize_t n = ::recv(fd, state.recv_into.data(), state.recv_into.size(), MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      state.readable = false;  // wait for the next edge
      return;
    }
    if (errno == EINTR) {
      Queue(fd);
      return;
    }
    state.recv = false;
    Post(state.recv_tag, -errno);
    return;
  }
  // Less than asked for: the socket is drained (EOF included); more data
  // arriving later raises a new edge.
  if (static_cast<size_t>(n) < state.recv_into.size()) state.readable = false;
  state.recv = false;
  Post(state.recv_tag, static_cast<int>(n));
}

void EpollReactor::DoSend(int fd, FdState& state) {
  const ssize_t n =
      ::send(fd, state.send_bytes.data(), state.send_bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      state.writable = false;
      return;
    }
    if (errno == EINTR) {
      Queue(fd);
      return;
    }
    state.send = false;
    Post(state.send_tag, -errno);
    return;
  }
  if (static_cast<size_t>(n) < state.send_bytes.size()) state.writable = false;  // buffer full
  state.send = false;
  Post(state.send_tag, static_cast<int>(n));  // a short write: the room sends the rest
}

void EpollReactor::DoConnect(int fd, FdState& state) {
  int error = 0;
  socklen_t length = sizeof(error);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = errno;
  state.connect = false;
  Post(state.connect_tag, -error);
}

void EpollReactor::DoAccept(int fd, FdState&) {
  // Bounded per turn so one busy listener cannot starve the rest.
  for (unsigned i = 0; i < kBatch; ++i) {
    const int client = accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (client < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) Post(fds_[fd].accept_tag, -errno, /*more=*/true);
      fds_[fd].readable = false;
      return;
    }
    // A new socket may reuse the number of one closed earlier: start afresh.
    // (This may grow fds_: the listener's state is read by index.)
    State(client) = FdState{};
    Post(fds_[fd].accept_tag, client, /*more=*/true);
  }
  Queue(fd);  // more may be waiting
}

void EpollReactor::DoDatagrams(int fd, FdState& state) {
  const size_t want = std::min<size_t>(kBatch, free_buffers_.size());
  if (want == 0) {
    starved_ = true;  // PublishBuffers queues it again
    return;
  }
  batch_buffers_.clear();
  for (size_t i = 0; i < want; ++i) {
    const uint16_t id = free_buffers_.back();
    free_buffers_.pop_back();
    batch_buffers_.push_back(id);
    BufferMeta& meta = meta_[id];
    iov_[i] = {buffers_.get() + size_t{id} * buffer_size_, buffer_size_};
    mmsg_[i] = {};
    mmsg_[i].msg_hdr.msg_name = &meta.source;
    mmsg_[i].msg_hdr.msg_namelen = sizeof(meta.source);
    mmsg_[i].msg_hdr.msg_iov = &iov_[i];
    mmsg_[i].msg_hdr.msg_iovlen = 1;
    mmsg_[i].msg_hdr.msg_control = meta.control;
    mmsg_[i].msg_hdr.msg_controllen = sizeof(meta.control);
  }
  const int got = recvmmsg(fd, mmsg_, static_cast<unsigned>(want), MSG_DONTWAIT, nullptr);
  const int received = std::max(got, 0);
  for (int i = 0; i < received; ++i) {
    const uint16_t id = batch_buffers_[i];
    BufferMeta& meta = meta_[id];
    meta.length = mmsg_[i].msg_len;
    meta.source_length = mmsg_[i].msg_hdr.msg_namelen;
    meta.truncated = (mmsg_[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
    Datagram parsed;
    ReadReceiveControl(mmsg_[i].msg_hdr, parsed);
    meta.received_realtime_ns = parsed.received_realtime_ns;
    meta.socket_drops = parsed.socket_drops;
    Completion completion;
    completion.data = state.datagram_tag;
    completion.result = static_cast<int>(meta.length);
    completion.more = true;
    completion.has_buffer = true;
    completion.buffer_id = id;
    completions_.push_back(completion);
  }
  for (size_t i = want; i-- > static_cast<size_t>(received);) {
    free_buffers_.push_back(batch_buffers_[i]);  // unused this time
  }
  if (got < 0) {
    if (errno == EINTR) {
      Queue(fd);
    } else {
      if (errno != EAGAIN && errno != EWOULDBLOCK) Post(state.datagram_tag, -errno, true);
      state.readable = false;
    }
    return;
  }
  if (static_cast<size_t>(got) == want) {
    Queue(fd);  // a full batch: there may be more
  } else {
    state.readable = false;
  }
}

// One sendmmsg per socket for the datagrams queued this iteration.
void EpollReactor::FlushDatagrams() {
  if (outbound_.empty()) return;
  outbound_fds_.clear();
  for (const Outbound& out : outbound_) {
    if (std::find(outbound_fds_.begin(), outbound_fds_.end(), out.fd) == outbound_fds_.end()) {
      outbound_fds_.push_back(out.fd);
    }
  }
  for (int fd : outbound_fds_) {
    size_t next = 0;
    while (true) {
      unsigned count = 0;
      for (; next < outbound_.size() && count < kBatch; ++next) {
        const Outbound& out = outbound_[next];
        if (out.fd != fd) continue;
        iov_[count] = {const_cast<uint8_t*>(out.bytes.data()), out.bytes.size()};
        mmsg_[count] = {};
        mmsg_[count].msg_hdr.msg_name = const_cast<sockaddr*>(out.to);
        mmsg_[count].msg_hdr.msg_namelen = out.to_length;
        mmsg_[count].msg_hdr.msg_iov = &iov_[count];
        mmsg_[count].msg_hdr.msg_iovlen = 1;
        mmsg_owner_[count] = next;
        ++count;
      }
      if (count == 0) break;
      unsigned done = 0;
      while (done < count) {
        const int sent = sendmmsg(fd, mmsg_ + done, count - done, MSG_DONTWAIT);
        if (sent < 0) {
          if (errno == EINTR) continue;
          // This datagram fails (a full socket buffer is a drop for UDP, as
          // for any server); go on with the rest.
          Post(outbound_[mmsg_owner_[done]].tag, -errno);
          ++done;
          continue;
        }
        for (int i = 0; i < sent; ++i) {
          Post(outbound_[mmsg_owner_[done + i]].tag, static_cast<int>(mmsg_[done + i].msg_len));
        }
        done += static_cast<unsigned>(sent);
      }
    }
  }
  outbound_.clear();
}

void EpollReactor::RunQueued() {
  // Operations queued while running go to the next turn.
  running_.swap(work_);
  for (int fd : running_) {
    fds_[fd].queued = false;
    Perform(fd);
  }
  running_.clear();
}

absl::Status EpollReactor::Submit() {
  FlushDatagrams();
  RunQueued();
  return absl::OkStatus();
}

absl::Status EpollReactor::SubmitAndWait(std::chrono::milliseconds timeout) {
  FlushDatagrams();
  RunQueued();
  // Never sleep with completions or attempts pending.
  const int wait_ms = completions_.empty() && work_.empty() ? static_cast<int>(timeout.count()) : 0;
  const int n = epoll_wait(epoll_.get(), events_, static_cast<int>(std::size(events_)), wait_ms);
  if (n < 0) {
    if (errno == EINTR) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("epoll_wait: ", std::strerror(errno)));
  }
  for (int i = 0; i < n; ++i) {
    const int fd = events_[i].data.fd;
    FdState& state = fds_[fd];
    const uint32_t events = events_[i].events;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) state.readable = true;
    if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) state.writable = true;
    Perform(fd);
  }
  return absl::OkStatus();
}

size_t EpollReactor::Reap(absl::FunctionRef<void(const Completion&)> handle) {
  // Completions posted while handling these (new operations attempted at
  // once) wait for the next Reap, as a ring's would for the next wait.
  reaping_.swap(completions_);
  for (const Completion& completion : reaping_) handle(completion);
  const size_t n = reaping_.size();
  reaping_.clear();
  return n;
}

}  // namespace dotproxy::io
