#pragma once
// dnstap protobuf encoding of one event (dnstap.proto, protobuf-c). Called on
// the dnstap writer thread; thread-safe (no shared state).

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "dotproxy/dnstap/event.h"

namespace dotproxy::dnstap {

// What turns an event's steady-clock times into wall-clock times:
// wall = steady + offset (read by the writer once per batch).
int64_t WallClockOffsetNs();

// Appends the encoded Dnstap frame for `header` and its `message` to `out`
// and returns its size. identity and version go in every frame (dnstap's
// own fields); empty ones are left out.
size_t EncodeEvent(const EventHeader& header, std::span<const uint8_t> message,
                   std::string_view identity, std::string_view version, int64_t wall_offset_ns,
                   std::vector<uint8_t>& out);

}  // namespace dotproxy::dnstap
