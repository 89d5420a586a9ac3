#include "dotproxy/io/socket.h"

#include <arpa/inet.h>
#include <linux/filter.h>
#include <fcntl.h>
#include <netinet/tcp.h>

#include <cerrno>
#include <algorithm>
#include <charconv>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace dotproxy::io {
namespace {

absl::string_view Sv(std::string_view text) { return {text.data(), text.size()}; }

absl::Status ErrnoStatus(absl::string_view what, int err) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(err)));
}

bool ParsePort(std::string_view text, uint16_t& port) {
  unsigned value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value == 0 || value > 65535) {
    return false;
  }
  port = static_cast<uint16_t>(value);
  return true;
}

void SetBufferSizes(int fd, int bytes) {
  if (bytes <= 0) return;
  // SO_*BUFFORCE needs CAP_NET_ADMIN; fall back to the capped variant.
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes)) != 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
  }
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof(bytes)) != 0) {
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
  }
}

// IP_FREEBIND / IPV6_FREEBIND: bind an address this host does not have (yet),
// e.g. a link-local service address added to an interface after we start.
absl::Status SetFreebind(int fd, const SocketAddress& address) {
  const int one = 1;
  if (address.family() == AF_INET6) {
    // IPV6_FREEBIND needs Linux 4.15; older kernels honour IP_FREEBIND on v6.
    if (setsockopt(fd, IPPROTO_IPV6, IPV6_FREEBIND, &one, sizeof(one)) == 0) return absl::OkStatus();
  }
  if (setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof(one)) != 0) {
    return ErrnoStatus(absl::StrCat("IP_FREEBIND on ", address.ToString()), errno);
  }
  return absl::OkStatus();
}

// bind()'s error, with the way out when the address is not (yet) on this host.
absl::Status BindError(absl::string_view what, const SocketAddress& address, int err,
                       bool freebind) {
  absl::Status status = ErrnoStatus(absl::StrCat("bind ", what, " ", address.ToString()), err);
  if (err != EADDRNOTAVAIL || freebind) return status;
  return absl::UnavailableError(absl::StrCat(
      status.message(), " (not an address of this host; --freebind binds it anyway)"));
}

}  // namespace

uint16_t SocketAddress::port() const {
  if (family() == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
  return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
}

std::string SocketAddress::HostString() const {
  char text[INET6_ADDRSTRLEN] = {};
  if (family() == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage)->sin_addr, text, sizeof(text));
  } else {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_addr, text,
              sizeof(text));
  }
  return text;
}

std::string SocketAddress::ToString() const {
  if (family() == AF_INET6) return absl::StrCat("[", HostString(), "]:", port());
  return absl::StrCat(HostString(), ":", port());
}

bool SocketAddress::operator==(const SocketAddress& other) const {
  if (family() != other.family() || port() != other.port()) return false;
  if (family() == AF_INET) {
    return reinterpret_cast<const sockaddr_in*>(&storage)->sin_addr.s_addr ==
           reinterpret_cast<const sockaddr_in*>(&other.storage)->sin_addr.s_addr;
  }
  const auto* a = reinterpret_cast<const sockaddr_in6*>(&storage);
  const auto* b = reinterpret_cast<const sockaddr_in6*>(&other.storage);
  return std::memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) == 0 &&
         a->sin6_scope_id == b->sin6_scope_id;
}

absl::StatusOr<SocketAddress> ParseSocketAddress(std::string_view text, int default_port) {
  std::string_view host = text;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("'", Sv(text), "': missing ']'"));
    }
    host = text.substr(1, close - 1);
    std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        return absl::InvalidArgumentError(absl::StrCat("'", Sv(text), "': expected ':PORT' after ']'"));
      }
      port_text = rest.substr(1);
    }
  } else if (std::count(text.begin(), text.end(), ':') == 1) {
    const size_t colon = text.find(':');
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
  }

  uint16_t port = 0;
  if (!port_text.empty() || text.ends_with(':')) {
    if (!ParsePort(port_text, port)) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", Sv(text), "': port must be a number from 1 to 65535"));
    }
  } else if (default_port < 0) {
    return absl::InvalidArgumentError(absl::StrCat("'", Sv(text), "': a port is required"));
  } else {
    port = static_cast<uint16_t>(default_port);
  }

  SocketAddress address;
  const std::string host_string(host);
  auto* v4 = reinterpret_cast<sockaddr_in*>(&address.storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&address.storage);
  if (inet_pton(AF_INET, host_string.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    address.length = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, host_string.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    address.length = sizeof(sockaddr_in6);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("'", Sv(text), "': not an IPv4 or IPv6 address (IPv6 goes in brackets: [::1]:53)"));
  }
  return address;
}

int ReceiveBufferBytes(int fd) {
  int bytes = 0;
  socklen_t length = sizeof(bytes);
  if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, &length) != 0) return 0;
  return bytes;
}

void SetReceiveBuffer(int fd, int bytes) {
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes)) != 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
  }
}

void EnableReceiveTimestamps(int fd) {
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof(one));
}

absl::StatusOr<UniqueFd> OpenUdpListener(const SocketAddress& address, int buffer_bytes,
                                         bool freebind) {
  UniqueFd fd(socket(address.family(), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoStatus("socket(UDP)", errno);
  const int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (address.family() == AF_INET6) {
    setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  }
  SetBufferSizes(fd.get(), buffer_bytes);
  EnableReceiveTimestamps(fd.get());
  if (freebind) {
    if (auto status = SetFreebind(fd.get(), address); !status.ok()) return status;
  }
  if (bind(fd.get(), address.get(), address.length) != 0) {
    return BindError("UDP", address, errno, freebind);
  }
  return fd;
}

absl::StatusOr<UniqueFd> OpenTcpListener(const SocketAddress& address, int backlog,
                                         bool freebind) {
  UniqueFd fd(socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoStatus("socket(TCP)", errno);
  const int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (address.family() == AF_INET6) {
    setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  }
  if (freebind) {
    if (auto status = SetFreebind(fd.get(), address); !status.ok()) return status;
  }
  if (bind(fd.get(), address.get(), address.length) != 0) {
    return BindError("TCP", address, errno, freebind);
  }
  if (listen(fd.get(), backlog) != 0) {
    return ErrnoStatus(absl::StrCat("listen TCP ", address.ToString()), errno);
  }
  return fd;
}

std::string InheritedListener::ToString() const {
  return absl::StrCat(datagram() ? "udp " : "tcp ", address.ToString());
}

absl::StatusOr<UniqueFd> DuplicateListener(const InheritedListener& listener) {
  UniqueFd fd(fcntl(listener.fd, F_DUPFD_CLOEXEC, 3));
  if (!fd) return ErrnoStatus(absl::StrCat("dup inherited ", listener.ToString()), errno);
  return fd;
}

absl::StatusOr<UniqueFd> OpenReusePortSibling(const InheritedListener& listener,
                                              int buffer_bytes) {
  const SocketAddress& address = listener.address;
  UniqueFd fd(socket(address.family(), listener.type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoStatus(absl::StrCat("socket for ", listener.ToString()), errno);
  const int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (!listener.datagram()) setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (address.family() == AF_INET6) {
    // As the inherited socket has it: members of one reuseport group must agree.
    int v6only = 1;
    socklen_t length = sizeof(v6only);
    getsockopt(listener.fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &length);
    setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
  }
  if (listener.datagram()) {
    SetBufferSizes(fd.get(), buffer_bytes);
    EnableReceiveTimestamps(fd.get());
  }
  if (bind(fd.get(), address.get(), address.length) != 0) {
    return ErrnoStatus(absl::StrCat("bind SO_REUSEPORT sibling of ", listener.ToString()), errno);
  }
  if (!listener.datagram() && listen(fd.get(), 1024) != 0) {
    return ErrnoStatus(absl::StrCat("listen ", listener.ToString()), errno);
  }
  return fd;
}

absl::StatusOr<UniqueFd> OpenTcpClient(int family, int user_timeout_ms) {
  UniqueFd fd(socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoStatus("socket(TCP upstream)", errno);
  const int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (user_timeout_ms > 0) {
    setsockopt(fd.get(), IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof(user_timeout_ms));
  }
  return fd;
}

absl::Status AttachPrefixSteering(int fd, uint32_t group_size, int v4_prefix, int v6_prefix) {
  if (group_size <= 1) return absl::OkStatus();
  auto top = [](int bits) -> uint32_t {
    if (bits <= 0) return 0;
    return bits >= 32 ? 0xffffffffu : ~uint32_t{0} << (32 - bits);
  };
  const int v6 = std::min(v6_prefix, 64);
  // The program runs with the packet's data at the transport payload; the
  // IP header is reached through SKF_NET_OFF. X holds the first word.
  const uint32_t net = static_cast<uint32_t>(SKF_NET_OFF);
  sock_filter code[] = {
      /* 0 */ BPF_STMT(BPF_LD | BPF_B | BPF_ABS, net + 0),  // version/IHL
      /* 1 */ BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 4),
      /* 2 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 4, 0, 3),  // IPv4? else to 6
      /* 3 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, net + 12),  // IPv4 source
      /* 4 */ BPF_STMT(BPF_ALU | BPF_AND | BPF_K, top(v4_prefix)),
      /* 5 */ BPF_JUMP(BPF_JMP | BPF_JA, 6, 0, 0),  // to 12
      /* 6 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, net + 8),  // IPv6 source, first word
      /* 7 */ BPF_STMT(BPF_ALU | BPF_AND | BPF_K, top(v6)),
      /* 8 */ BPF_STMT(BPF_MISC | BPF_TAX, 0),
      /* 9 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, net + 12),  // second word
      /* 10 */ BPF_STMT(BPF_ALU | BPF_AND | BPF_K, top(v6 - 32)),
      /* 11 */ BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0),
      /* 12 */ BPF_STMT(BPF_ALU | BPF_MUL | BPF_K, 0x9e3779b1u),  // spread the prefix bits
      /* 13 */ BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 16),
      /* 14 */ BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, group_size),
      /* 15 */ BPF_STMT(BPF_RET | BPF_A, 0),
  };
  sock_fprog program{static_cast<unsigned short>(std::size(code)), code};
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &program, sizeof(program)) != 0) {
    return absl::InternalError(
        absl::StrCat("SO_ATTACH_REUSEPORT_CBPF: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace dotproxy::io
