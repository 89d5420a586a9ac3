#pragma once
// The dnstap writer: one thread that drains every shard's Tap, encodes the
// events (protobuf-c) and writes them as Frame Streams (libfstrm) to a Unix
// socket (a reader such as fstrm_capture, dnstap, Vector) or a file.
//
//   auto writer = Writer::Create({"unix:/run/dnstap.sock", ...}, shards);
//   shard[i].AttachDnstap(&(*writer)->tap(i));
//   (*writer)->Start();
//   ...
//   (*writer)->Stop();   // after the shards stopped: drains, closes
//
// A Unix reader that goes away is reconnected every second; while the
// socket is down the writer leaves the rings alone, so they fill and the
// shards drop (and count) what does not fit. Created, started and stopped
// on the control thread.

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "dotproxy/dnstap/tap.h"

struct fstrm_writer;

namespace dotproxy::dnstap {

struct WriterOptions {
  std::string destination;  // "unix:PATH" or "file:PATH"
  std::string identity;     // dnstap identity (default: the host name)
  std::string version;      // dnstap version
  size_t ring_bytes = kRingBytesPerShard;
};

// Splits "unix:PATH" / "file:PATH"; the error says what is expected.
absl::Status CheckDestination(std::string_view destination);

class Writer {
 public:
  // Opens nothing yet (a file destination is created by Start's thread;
  // a Unix reader may come later).
  static absl::StatusOr<std::unique_ptr<Writer>> Create(const WriterOptions& options,
                                                        size_t taps);
  ~Writer();

  Tap& tap(size_t index) { return *taps_[index]; }
  size_t taps() const { return taps_.size(); }

  void Start();
  // Writes what the rings still hold, closes the stream (a STOP frame) and
  // joins the thread. The taps' producers must have stopped. Waits at most
  // `limit`: a Unix reader that accepted but never answers the Frame
  // Streams handshake blocks fstrm's open in read(), and exit must not
  // hang on it; false then (the thread is left behind, the process is
  // about to exit).
  bool Stop(std::chrono::milliseconds limit = std::chrono::milliseconds(2000));

 private:
  Writer() = default;
  void Run();
  // Drains every tap once; returns the events seen.
  size_t DrainOnce(bool final);
  bool EnsureOpen(bool final);
  bool Flush(std::vector<size_t>& per_tap);

  WriterOptions options_;
  bool unix_ = false;
  std::string path_;
  std::vector<std::unique_ptr<Tap>> taps_;
  fstrm_writer* stream_ = nullptr;
  bool open_ = false;
  std::chrono::steady_clock::time_point next_open_attempt_{};
  std::atomic<bool> stop_{false};
  std::atomic<bool> finished_{false};  // Run() returned
  bool abandoned_ = false;             // Stop() gave up: the thread still uses stream_
  std::thread thread_;
  // Writer thread: encoded frames waiting for one writev.
  std::vector<uint8_t> frames_;
  std::vector<size_t> frame_ends_;
};

}  // namespace dotproxy::dnstap
