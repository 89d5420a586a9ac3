#pragma once
// Splits a byte stream into DNS messages framed by a 2-byte big-endian length
// (RFC 1035 §4.2.2, used by DNS over TCP and over TLS, RFC 7858 §3.3).
//
// Bytes arrive in arbitrary pieces (TCP segments, TLS records); the framer
// owns one fixed buffer allocated at construction, so framing allocates
// nothing per message. One owner thread. WriteLengthPrefix writes the same
// prefix for the sending side.
//
//   auto space = framer.WritableSpace();
//   size_t n = read_into(space);
//   framer.Commit(n);
//   std::span<uint8_t> msg;
//   while (framer.NextMessage(max, msg) == StreamFramer::Next::kMessage) use(msg);
//   framer.Compact();

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>

namespace dotproxy::dns {

// The length prefix in front of each message on a stream, and the largest
// length it can state.
inline constexpr size_t kStreamLengthPrefixSize = 2;
inline constexpr size_t kMaxStreamMessageLength = 0xffff;

// Writes the 2-byte big-endian length prefix for a message of `length`
// bytes at `p` (RFC 1035 §4.2.2), the inverse of what StreamFramer reads.
// Callers that send on TCP/TLS put it in front of the message:
//
//   WriteLengthPrefix(out, n);
//   std::memcpy(out + kStreamLengthPrefixSize, message, n);
//
// REQUIRES: `length` <= kMaxStreamMessageLength (reject larger messages
// before framing; the prefix cannot state them), and 2 writable bytes at `p`.
inline void WriteLengthPrefix(uint8_t* p, size_t length) {
  p[0] = static_cast<uint8_t>(length >> 8);
  p[1] = static_cast<uint8_t>(length);
}

class StreamFramer {
 public:
  enum class Next : uint8_t {
    kMessage,   // `message` holds one complete message (without the prefix)
    kNeedMore,  // the buffered bytes end inside a prefix or a message
    kTooLarge,  // the next message declares more than `max_length` bytes
  };

  // REQUIRES: capacity >= max message length + 2, so a whole message always
  // fits after Compact().
  explicit StreamFramer(size_t capacity)
      : owned_(new uint8_t[capacity]), buffer_(owned_.get()), capacity_(capacity) {}
  // Frames into `storage`, borrowed for the framer's lifetime (e.g. a slot
  // of a region whose pages the owner returns to the kernel).
  explicit StreamFramer(std::span<uint8_t> storage)
      : buffer_(storage.data()), capacity_(storage.size()) {}

  // Free space after the buffered bytes. Empty only when the buffer is full.
  std::span<uint8_t> WritableSpace() {
    return {buffer_ + end_, capacity_ - end_};
  }
  void Commit(size_t n) { end_ += n; }

  // Returns the next complete message. `message` borrows the framer's buffer
  // (the caller may patch it in place) and stays valid until the next
  // Compact() or Commit().
  Next NextMessage(size_t max_length, std::span<uint8_t>& message) {
    if (end_ - begin_ < 2) return Next::kNeedMore;
    uint8_t* p = buffer_ + begin_;
    const size_t length = size_t{p[0]} << 8 | p[1];
    if (length > max_length) return Next::kTooLarge;
    if (end_ - begin_ < 2 + length) return Next::kNeedMore;
    message = {p + 2, length};
    begin_ += 2 + length;
    return Next::kMessage;
  }

  // Moves a partial message to the front of the buffer.
  void Compact() {
    if (begin_ == 0) return;
    const size_t remaining = end_ - begin_;
    if (remaining > 0) std::memmove(buffer_, buffer_ + begin_, remaining);
    begin_ = 0;
    end_ = remaining;
  }

  size_t buffered() const { return end_ - begin_; }
  // True when a whole message (its prefix and the length it states, of
  // any size) is buffered: NextMessage would not say kNeedMore.
  bool HasMessage() const {
    if (end_ - begin_ < 2) return false;
    const size_t length = size_t{buffer_[begin_]} << 8 | buffer_[begin_ + 1];
    return end_ - begin_ >= 2 + length;
  }
  bool empty() const { return end_ == begin_; }
  void Clear() { begin_ = end_ = 0; }

 private:
  std::unique_ptr<uint8_t[]> owned_;  // null when the storage is borrowed
  uint8_t* buffer_;
  size_t capacity_;
  size_t begin_ = 0;  // first unconsumed byte
  size_t end_ = 0;    // one past the last buffered byte
};

}  // namespace dotproxy::dns
