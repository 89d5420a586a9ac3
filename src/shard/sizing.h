#pragma once
// Sizing of a shard's fixed pools, shared by the shard (which makes them at
// start, so the query path never allocates) and the memory estimate
// (memory.cc), which must count what the shard makes.

#include <cstddef>

#include "dotproxy/io/reactor.h"

namespace dotproxy::shard {

inline constexpr io::ReactorOptions kReactorOptions{
    .submission_entries = 4096,
    .completion_entries = 16384,
    .datagram_buffers = 2048,
    .datagram_buffer_size = 2048,
};
inline constexpr size_t kUdpReplySlots = 2048;

}  // namespace dotproxy::shard
