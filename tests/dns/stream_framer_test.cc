#include "dotproxy/dns/stream_framer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <span>
#include <vector>

namespace dotproxy::dns {
namespace {

std::vector<uint8_t> Frame(const std::vector<std::vector<uint8_t>>& messages) {
  std::vector<uint8_t> stream;
  for (const auto& m : messages) {
    stream.push_back(static_cast<uint8_t>(m.size() >> 8));
    stream.push_back(static_cast<uint8_t>(m.size()));
    stream.insert(stream.end(), m.begin(), m.end());
  }
  return stream;
}

TEST(StreamFramerTest, SplitsBackToBackMessages) {
  const std::vector<std::vector<uint8_t>> messages = {{1, 2, 3}, {4}, std::vector<uint8_t>(300, 9)};
  const auto stream = Frame(messages);
  StreamFramer framer(1024);
  auto space = framer.WritableSpace();
  std::memcpy(space.data(), stream.data(), stream.size());
  framer.Commit(stream.size());
  std::span<uint8_t> message;
  for (const auto& expected : messages) {
    ASSERT_EQ(framer.NextMessage(512, message), StreamFramer::Next::kMessage);
    EXPECT_EQ(std::vector<uint8_t>(message.begin(), message.end()), expected);
  }
  EXPECT_EQ(framer.NextMessage(512, message), StreamFramer::Next::kNeedMore);
  EXPECT_TRUE(framer.empty());
}

// HasMessage agrees with NextMessage at every byte of a stream.
TEST(StreamFramerTest, HasMessageSaysWhetherAWholeMessageIsBuffered) {
  const auto stream = Frame({{1, 2, 3}, {}});
  StreamFramer framer(64);
  std::span<uint8_t> message;
  EXPECT_FALSE(framer.HasMessage());
  for (size_t i = 0; i < 5; ++i) {  // the prefix and the first message
    framer.WritableSpace()[0] = stream[i];
    framer.Commit(1);
    EXPECT_EQ(framer.HasMessage(), i == 4) << "after byte " << i;
  }
  ASSERT_EQ(framer.NextMessage(512, message), StreamFramer::Next::kMessage);
  EXPECT_FALSE(framer.HasMessage());
  framer.WritableSpace()[0] = stream[5];
  framer.Commit(1);
  EXPECT_FALSE(framer.HasMessage()) << "half a prefix";
  framer.WritableSpace()[0] = stream[6];
  framer.Commit(1);
  EXPECT_TRUE(framer.HasMessage()) << "an empty message is whole with its prefix";
  ASSERT_EQ(framer.NextMessage(512, message), StreamFramer::Next::kMessage);
  EXPECT_TRUE(message.empty());
  EXPECT_FALSE(framer.HasMessage());
}

TEST(StreamFramerTest, ReassemblesAcrossEverySplitPoint) {
  const std::vector<std::vector<uint8_t>> messages = {{10, 11, 12, 13}, {20, 21}};
  const auto stream = Frame(messages);
  for (size_t split = 0; split <= stream.size(); ++split) {
    StreamFramer framer(64);
    std::vector<std::vector<uint8_t>> seen;
    auto feed = [&](size_t from, size_t to) {
      auto space = framer.WritableSpace();
      std::memcpy(space.data(), stream.data() + from, to - from);
      framer.Commit(to - from);
      std::span<uint8_t> message;
      while (framer.NextMessage(64, message) == StreamFramer::Next::kMessage) {
        seen.emplace_back(message.begin(), message.end());
      }
      framer.Compact();
    };
    feed(0, split);
    feed(split, stream.size());
    EXPECT_EQ(seen, messages) << "split at " << split;
  }
}

TEST(StreamFramerTest, ReportsOversizedMessage) {
  StreamFramer framer(64);
  auto space = framer.WritableSpace();
  space[0] = 0x10;
  space[1] = 0x00;
  framer.Commit(2);
  std::span<uint8_t> message;
  EXPECT_EQ(framer.NextMessage(1024, message), StreamFramer::Next::kTooLarge);
}

TEST(StreamFramerTest, CompactKeepsPartialMessage) {
  const auto stream = Frame({{1, 2}, {3, 4, 5, 6}});
  StreamFramer framer(16);
  auto space = framer.WritableSpace();
  std::memcpy(space.data(), stream.data(), 7);  // first message + 3 bytes of the second
  framer.Commit(7);
  std::span<uint8_t> message;
  ASSERT_EQ(framer.NextMessage(16, message), StreamFramer::Next::kMessage);
  ASSERT_EQ(framer.NextMessage(16, message), StreamFramer::Next::kNeedMore);
  framer.Compact();
  EXPECT_EQ(framer.buffered(), 3u);
  EXPECT_EQ(framer.WritableSpace().size(), 13u);
  space = framer.WritableSpace();
  std::memcpy(space.data(), stream.data() + 7, stream.size() - 7);
  framer.Commit(stream.size() - 7);
  ASSERT_EQ(framer.NextMessage(16, message), StreamFramer::Next::kMessage);
  EXPECT_EQ(std::vector<uint8_t>(message.begin(), message.end()), (std::vector<uint8_t>{3, 4, 5, 6}));
}

TEST(LengthPrefixTest, WritesTwoBytesBigEndian) {
  uint8_t p[3] = {0xee, 0xee, 0xee};
  WriteLengthPrefix(p, 0x1234);
  EXPECT_EQ(p[0], 0x12);
  EXPECT_EQ(p[1], 0x34);
  EXPECT_EQ(p[2], 0xee);  // nothing past the prefix
  WriteLengthPrefix(p, kMaxStreamMessageLength);
  EXPECT_EQ(p[0], 0xff);
  EXPECT_EQ(p[1], 0xff);
  WriteLengthPrefix(p, 0);
  EXPECT_EQ(p[0], 0);
  EXPECT_EQ(p[1], 0);
}

TEST(LengthPrefixTest, FramerReadsWhatItWrites) {
  const std::vector<uint8_t> body(300, 7);
  StreamFramer framer(512);
  auto space = framer.WritableSpace();
  WriteLengthPrefix(space.data(), body.size());
  std::memcpy(space.data() + kStreamLengthPrefixSize, body.data(), body.size());
  framer.Commit(kStreamLengthPrefixSize + body.size());
  std::span<uint8_t> message;
  ASSERT_EQ(framer.NextMessage(512, message), StreamFramer::Next::kMessage);
  EXPECT_EQ(std::vector<uint8_t>(message.begin(), message.end()), body);
}

// Moved from tests/tls/session_test.cc: the framer on its own.

TEST(StreamFramerTest, ReassemblesAcrossEveryPairOfSplitPoints) {
  const std::vector<std::vector<uint8_t>> messages = {
      std::vector<uint8_t>(300, 0x5a), {1}, {2, 3, 4, 5, 6}};
  const auto stream = Frame(messages);
  for (size_t first = 0; first <= stream.size(); ++first) {
    for (size_t second = first; second <= stream.size(); second += 37) {
      StreamFramer framer(300 + 2);
      std::vector<std::vector<uint8_t>> seen;
      size_t fed = 0;
      auto feed_until = [&](size_t end) {
        while (fed < end) {
          auto space = framer.WritableSpace();
          ASSERT_FALSE(space.empty());
          const size_t n = std::min(space.size(), end - fed);
          std::memcpy(space.data(), stream.data() + fed, n);
          framer.Commit(n);
          fed += n;
          std::span<uint8_t> message;
          while (framer.NextMessage(300, message) == StreamFramer::Next::kMessage) {
            seen.emplace_back(message.begin(), message.end());
          }
          framer.Compact();
        }
      };
      feed_until(first);
      feed_until(second);
      feed_until(stream.size());
      ASSERT_EQ(seen, messages) << "split at " << first << " and " << second;
      EXPECT_TRUE(framer.empty());
    }
  }
}

TEST(StreamFramerTest, AcceptsTheLargestStreamMessage) {
  const std::vector<std::vector<uint8_t>> messages = {std::vector<uint8_t>(65535, 0xee)};
  const auto stream = Frame(messages);
  StreamFramer framer(65535 + 2);
  auto space = framer.WritableSpace();
  ASSERT_EQ(space.size(), stream.size());
  std::memcpy(space.data(), stream.data(), stream.size());
  framer.Commit(stream.size());
  std::span<uint8_t> message;
  ASSERT_EQ(framer.NextMessage(65535, message), StreamFramer::Next::kMessage);
  EXPECT_EQ(message.size(), 65535u);
  EXPECT_TRUE(framer.empty());
}

}  // namespace
}  // namespace dotproxy::dns
