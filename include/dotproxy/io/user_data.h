#pragma once
// What an I/O completion belongs to, packed in the 64 bits the kernel hands
// back with it (io_uring's user_data; the epoll backend reuses the same
// value): the operation (8 bits), the index of the object in its room's
// table (24 bits) and that object's generation (32 bits). A room bumps an
// object's generation when it recycles it, so a late completion for the
// previous occupant is recognised and ignored. Pure value type.
//
//   reactor.Recv(fd, space, {io::Op::kClientRecv, index, client.generation});
//   ...
//   const io::UserData data = completion.data;   // routed by data.op

#include <cstdint>

namespace dotproxy::io {

// One value per (room, operation). The shard routes a completion to the room
// that owns its Op; rooms never see another room's completions.
enum class Op : uint8_t {
  kNone = 0,
  kUdpRecv,          // UdpFrontend: multishot datagram receive (index: socket)
  kUdpSend,          // UdpFrontend: one reply datagram (index: reply slot)
  kAccept,           // TcpClients: multishot accept (index: listener)
  kClientRecv,       // TcpClients: receive on a client connection
  kClientSend,       // TcpClients: send on a client connection
  kUpstreamConnect,  // UpstreamPool -> Connection: TCP connect
  kUpstreamRecv,     // Connection: ciphertext receive
  kUpstreamSend,     // Connection: ciphertext send
  kCancel,           // Reactor: cancellation requests (completion ignored)
  kTlsAccept,        // TlsClients: multishot accept (index: listener)
  kTlsRecv,          // TlsClients: ciphertext receive on a client connection
  kTlsSend,          // TlsClients: ciphertext send on a client connection
};

inline constexpr uint32_t kMaxIndex = 0xffffff;

struct UserData {
  Op op = Op::kNone;
  uint32_t index = 0;       // REQUIRES: <= kMaxIndex
  uint32_t generation = 0;

  constexpr uint64_t Pack() const {
    return uint64_t{static_cast<uint8_t>(op)} << 56 | uint64_t{index & kMaxIndex} << 32 |
           generation;
  }
  static constexpr UserData Unpack(uint64_t packed) {
    return {static_cast<Op>(packed >> 56), static_cast<uint32_t>(packed >> 32) & kMaxIndex,
            static_cast<uint32_t>(packed)};
  }
};

}  // namespace dotproxy::io
