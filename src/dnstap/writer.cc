// The dnstap writer thread: rings → protobuf → Frame Streams (libfstrm's
// writer API, driven by our own thread).
//
// Why not fstrm_iothr: its input queues are lock-free (my_queue_mb, SPSC
// with memory barriers) and fstrm_iothr_submit never waits, but each
// message must be a heap buffer, protobuf-encoded on the producer's
// thread; a submit that reaches the notify threshold calls
// pthread_cond_signal (a futex system call); and while its writer is
// closed it discards entries without counting them. The allocation, the
// encoding and that wake-up would all be on the query path. Here the shard
// only copies bytes into its ring, and this thread does the rest.

#include "dotproxy/dnstap/writer.h"

#include <sys/uio.h>
#include <unistd.h>

#include <fstrm.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "dotproxy/dnstap/encode.h"

namespace dotproxy::dnstap {
namespace {

constexpr char kContentType[] = "protobuf:dnstap.Dnstap";
// Frames per writev: bounded so one batch is small next to the rings.
constexpr size_t kFramesPerWrite = 128;
constexpr auto kReopenInterval = std::chrono::seconds(1);
// The thread drains every ring once per pass and sleeps between passes
// (no pause while a ring is filling up). Measured with bench/load-like runs
// on one core shared with the shard: waking every 1 ms cost the shard
// 2-8 CPU-µs a query more (timer interrupts and switches on its core);
// every 5 ms the difference is within the noise, the writer itself about
// 1 µs a query. Idle, the pause doubles up to kIdleSleepMax. The ring
// holds what a pause lets in: at 200,000 queries a second on one shard and
// four ~200-byte events each, 5 ms is 0.8 MB of its 2 MiB.
constexpr auto kPassInterval = std::chrono::microseconds(5000);
constexpr auto kIdleSleepMax = std::chrono::microseconds(10000);
// Events taken from one ring per pass before the next ring's turn.
constexpr size_t kEventsPerTapPass = 4096;

void Add(std::atomic<uint64_t>* counter, uint64_t n) {
  if (counter != nullptr && n != 0) Tap::Bump(*counter, n);
}

}  // namespace

absl::Status CheckDestination(std::string_view destination) {
  for (std::string_view prefix : {"unix:", "file:"}) {
    if (destination.substr(0, prefix.size()) == prefix) {
      if (destination.size() == prefix.size()) {
        return absl::InvalidArgumentError(absl::StrCat("'", std::string(prefix), "' needs a path after it"));
      }
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError("expected unix:PATH (a Frame Streams reader) or file:PATH");
}

absl::StatusOr<std::unique_ptr<Writer>> Writer::Create(const WriterOptions& options,
                                                       size_t taps) {
  if (auto status = CheckDestination(options.destination); !status.ok()) return status;
  std::unique_ptr<Writer> writer(new Writer());
  writer->options_ = options;
  writer->unix_ = absl::StartsWith(options.destination, "unix:");
  writer->path_ = options.destination.substr(5);
  for (size_t i = 0; i < taps; ++i) writer->taps_.push_back(std::make_unique<Tap>(options.ring_bytes));

  fstrm_writer_options* writer_options = fstrm_writer_options_init();
  fstrm_writer_options_add_content_type(writer_options, kContentType, sizeof kContentType - 1);
  if (writer->unix_) {
    fstrm_unix_writer_options* unix_options = fstrm_unix_writer_options_init();
    fstrm_unix_writer_options_set_socket_path(unix_options, writer->path_.c_str());
    writer->stream_ = fstrm_unix_writer_init(unix_options, writer_options);
    fstrm_unix_writer_options_destroy(&unix_options);
  } else {
    fstrm_file_options* file_options = fstrm_file_options_init();
    fstrm_file_options_set_file_path(file_options, writer->path_.c_str());
    writer->stream_ = fstrm_file_writer_init(file_options, writer_options);
    fstrm_file_options_destroy(&file_options);
  }
  fstrm_writer_options_destroy(&writer_options);
  if (writer->stream_ == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("dnstap ", options.destination, ": cannot set up the Frame Streams writer"));
  }
  if (!writer->unix_) {
    // A file must be writable now: better a refusal at start than a silent
    // loss later.
    if (fstrm_writer_open(writer->stream_) != fstrm_res_success) {
      fstrm_writer_destroy(&writer->stream_);
      return absl::InvalidArgumentError(
          absl::StrCat("dnstap ", options.destination, ": cannot open the file for writing"));
    }
    writer->open_ = true;
  }
  return writer;
}

Writer::~Writer() {
  Stop();
  if (stream_ != nullptr && !abandoned_) fstrm_writer_destroy(&stream_);
}

void Writer::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { Run(); });
}

bool Writer::Stop(std::chrono::milliseconds limit) {
  if (!thread_.joinable()) return !abandoned_;
  stop_.store(true, std::memory_order_relaxed);
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!finished_.load(std::memory_order_acquire) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (!finished_.load(std::memory_order_acquire)) {
    thread_.detach();
    abandoned_ = true;
    return false;
  }
  thread_.join();
  return true;
}

void Writer::Run() {
  auto pause = kPassInterval;
  while (!stop_.load(std::memory_order_relaxed)) {
    const size_t seen = DrainOnce(false);
    if (seen >= kEventsPerTapPass) continue;  // a ring is filling: no pause
    pause = seen != 0 ? kPassInterval : std::min(pause * 2, kIdleSleepMax);
    std::this_thread::sleep_for(pause);
  }
  // The shards have stopped: write what is left (one last connection
  // attempt for a Unix reader), then close, which sends the STOP frame.
  while (DrainOnce(true) != 0) {
  }
  if (open_) fstrm_writer_close(stream_);
  open_ = false;
  finished_.store(true, std::memory_order_release);
}

bool Writer::EnsureOpen(bool final) {
  if (open_) return true;
  const auto now = std::chrono::steady_clock::now();
  if (!final && now < next_open_attempt_) return false;
  next_open_attempt_ = now + kReopenInterval;
  open_ = fstrm_writer_open(stream_) == fstrm_res_success;
  return open_;
}

size_t Writer::DrainOnce(bool final) {
  if (!EnsureOpen(final)) {
    if (!final) return 0;
    // Stopping with nobody to write to: what is left is lost, and counted.
    size_t seen = 0;
    for (auto& tap : taps_) {
      size_t n = 0;
      while (!tap->ring().Peek().empty()) {
        tap->ring().Pop();
        ++n;
      }
      Add(tap->counters().lost, n);
      seen += n;
    }
    return seen;
  }
  const int64_t offset = WallClockOffsetNs();
  std::vector<size_t> per_tap(taps_.size(), 0);
  size_t seen = 0;
  frames_.clear();
  frame_ends_.clear();
  for (size_t t = 0; t < taps_.size(); ++t) {
    ByteRing& ring = taps_[t]->ring();
    for (size_t n = 0; n < kEventsPerTapPass; ++n) {
      std::span<const uint8_t> record = ring.Peek();
      if (record.size() < sizeof(EventHeader)) break;
      EventHeader header;
      std::memcpy(&header, record.data(), sizeof header);
      EncodeEvent(header, record.subspan(sizeof header, header.message_length),
                  options_.identity, options_.version, offset, frames_);
      frame_ends_.push_back(frames_.size());
      ring.Pop();
      ++per_tap[t];
      ++seen;
      if (frame_ends_.size() == kFramesPerWrite && !Flush(per_tap)) return seen;
    }
  }
  if (!frame_ends_.empty()) Flush(per_tap);
  return seen;
}

// Writes the batch; counts it written or lost per tap. False when the
// stream failed (it is closed, and reopened later).
bool Writer::Flush(std::vector<size_t>& per_tap) {
  std::vector<iovec> iov(frame_ends_.size());
  size_t start = 0;
  for (size_t i = 0; i < frame_ends_.size(); ++i) {
    iov[i] = {frames_.data() + start, frame_ends_[i] - start};
    start = frame_ends_[i];
  }
  const bool ok = fstrm_writer_writev(stream_, iov.data(), static_cast<int>(iov.size())) ==
                  fstrm_res_success;
  for (size_t t = 0; t < taps_.size(); ++t) {
    Add(ok ? taps_[t]->counters().written : taps_[t]->counters().lost, per_tap[t]);
    per_tap[t] = 0;
  }
  frames_.clear();
  frame_ends_.clear();
  if (!ok) {
    fstrm_writer_close(stream_);
    open_ = false;
    next_open_attempt_ = std::chrono::steady_clock::now() + kReopenInterval;
  }
  return ok;
}

}  // namespace dotproxy::dnstap
