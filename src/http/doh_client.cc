#include "dotproxy/http/doh_client.h"

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "dotproxy/control/alloc_counter.h"

namespace dotproxy::http {

// --- RecyclingPool -----------------------------------------------------------

namespace {

constexpr size_t kSmallestClass = 32;
constexpr uint32_t kLargeBlock = UINT32_MAX;  // header mark: straight from malloc

int ClassOf(size_t size) {
  int c = 0;
  for (size_t capacity = kSmallestClass; capacity < size; capacity <<= 1) ++c;
  return c;
}

size_t ClassSize(int c) { return kSmallestClass << c; }

// The header before each block: its class, or kLargeBlock.
uint32_t& ClassMark(void* block, size_t header) {
  return *reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(block) - header);
}

}  // namespace

RecyclingPool::~RecyclingPool() {
  for (FreeBlock*& head : free_) {
    while (head != nullptr) {
      FreeBlock* next = head->next;
      std::free(reinterpret_cast<uint8_t*>(head) - kHeader);
      head = next;
    }
  }
}

void* RecyclingPool::Allocate(size_t size) {
  const int c = ClassOf(size == 0 ? 1 : size);
  if (c >= kClasses) {
    ++system_allocations_;
    control::CountHeapAllocation();  // the shard's heap_allocations, as operator new
    auto* raw = static_cast<uint8_t*>(std::malloc(kHeader + size));
    if (raw == nullptr) return nullptr;
    ClassMark(raw + kHeader, kHeader) = kLargeBlock;
    *reinterpret_cast<size_t*>(raw + 8) = size;  // for Reallocate's copy
    return raw + kHeader;
  }
  if (FreeBlock* block = free_[c]; block != nullptr) {
    free_[c] = block->next;
    return block;
  }
  ++system_allocations_;
  control::CountHeapAllocation();
  auto* raw = static_cast<uint8_t*>(std::malloc(kHeader + ClassSize(c)));
  if (raw == nullptr) return nullptr;
  ClassMark(raw + kHeader, kHeader) = static_cast<uint32_t>(c);
  return raw + kHeader;
}

void RecyclingPool::Free(void* block) {
  if (block == nullptr) return;
  const uint32_t c = ClassMark(block, kHeader);
  if (c == kLargeBlock) {
    std::free(static_cast<uint8_t*>(block) - kHeader);
    return;
  }
  auto* free_block = static_cast<FreeBlock*>(block);
  free_block->next = free_[c];
  free_[c] = free_block;
}

void RecyclingPool::Reserve(size_t size, size_t count) {
  const int c = ClassOf(size == 0 ? 1 : size);
  if (c >= kClasses) return;
  for (size_t i = 0; i < count; ++i) {
    auto* raw = static_cast<uint8_t*>(std::malloc(kHeader + ClassSize(c)));
    if (raw == nullptr) return;
    ++system_allocations_;
    ClassMark(raw + kHeader, kHeader) = static_cast<uint32_t>(c);
    Free(raw + kHeader);
  }
}

void* RecyclingPool::Reallocate(void* block, size_t size) {
  if (block == nullptr) return Allocate(size);
  if (size == 0) {
    Free(block);
    return nullptr;
  }
  const uint32_t c = ClassMark(block, kHeader);
  if (c != kLargeBlock && size <= ClassSize(static_cast<int>(c))) return block;
  void* grown = Allocate(size);
  if (grown == nullptr) return nullptr;
  // A class block holds its class size; a large one its size, kept in the
  // header's second half.
  const size_t old_size =
      c == kLargeBlock ? *reinterpret_cast<size_t*>(static_cast<uint8_t*>(block) - 8)
                       : ClassSize(static_cast<int>(c));
  std::memcpy(grown, block, std::min(old_size, size));
  Free(block);
  return grown;
}

// --- DohClient -------------------------------------------------------------

// A query's stream. `query` and `body` are reserved at construction and keep
// the capacity they grew to, so refilling them does not allocate.
struct DohClient::Stream {
  uint16_t tag = 0;
  uint16_t slot = 0;
  int32_t stream_id = 0;  // 0: not submitted
  bool in_use = false;
  bool finished = false;
  Result result = Result::kAnswer;
  bool failed = false;  // result already decided (a body over the limit)
  int status = 0;
  bool content_type_ok = false;
  size_t sent = 0;  // body bytes given to nghttp2
  std::vector<uint8_t> query;
  std::vector<uint8_t> body;
  char content_length[8] = {};
  uint8_t content_length_size = 0;
};

struct DohClient::Allocator {
  nghttp2_mem mem;
};

struct Callbacks {
  static DohClient& Self(void* user_data) { return *static_cast<DohClient*>(user_data); }

  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                      size_t namelen, const uint8_t* value, size_t valuelen, uint8_t,
                      void* user_data) {
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_RESPONSE) {
      return 0;  // trailers and the like carry nothing we need
    }
    DohClient::Stream* stream = Self(user_data).StreamOf(frame->hd.stream_id);
    if (stream == nullptr) return 0;
    const std::string_view header(reinterpret_cast<const char*>(name), namelen);
    const std::string_view text(reinterpret_cast<const char*>(value), valuelen);
    if (header == ":status") {
      int status = 0;
      for (char c : text) status = c >= '0' && c <= '9' ? status * 10 + (c - '0') : 1000;
      stream->status = status;
    } else if (header == "content-type") {
      // "application/dns-message", parameters (";...") and case aside.
      std::string_view type = text.substr(0, text.find(';'));
      while (!type.empty() && type.back() == ' ') type.remove_suffix(1);
      stream->content_type_ok = absl::EqualsIgnoreCase(
          absl::string_view(type.data(), type.size()), "application/dns-message");
    }
    return 0;
  }

  static int OnDataChunk(nghttp2_session* session, uint8_t, int32_t stream_id,
                         const uint8_t* data, size_t len, void* user_data) {
    DohClient& self = Self(user_data);
    DohClient::Stream* stream = self.StreamOf(stream_id);
    if (stream == nullptr || stream->failed) return 0;
    if (stream->body.size() + len > kMaxDohMessage) {
      // Not a DNS message: stop the transfer; the stream's close reports it.
      stream->failed = true;
      stream->result = DohClient::Result::kBadBody;
      nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_CANCEL);
      return 0;
    }
    // Grows (once per slot, up to 64 KiB) only for an answer larger than
    // any this slot carried before.
    stream->body.insert(stream->body.end(), data, data + len);
    return 0;
  }

  static int OnStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code,
                           void* user_data) {
    DohClient& self = Self(user_data);
    DohClient::Stream* stream = self.StreamOf(stream_id);
    if (stream == nullptr) return 0;  // cancelled by us
    using Result = DohClient::Result;
    Result result;
    if (stream->failed) {
      result = stream->result;
    } else if (error_code == NGHTTP2_REFUSED_STREAM) {
      result = Result::kRefused;
    } else if (error_code != NGHTTP2_NO_ERROR) {
      result = Result::kReset;
    } else if (stream->status != 200) {
      result = Result::kHttpStatus;
    } else if (!stream->content_type_ok) {
      result = Result::kBadContentType;
    } else if (stream->body.size() < 12) {
      result = Result::kBadBody;
    } else {
      result = Result::kAnswer;
    }
    self.Finish(*stream, result);
    return 0;
  }

  static int OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
    // Streams above last_stream_id are closed by nghttp2 with
    // REFUSED_STREAM right after this (reported as kRefused).
    if (frame->hd.type == NGHTTP2_GOAWAY) Self(user_data).going_away_ = true;
    return 0;
  }

  // A request that never left (the peer's GOAWAY came first): its stream
  // was never opened, so no close callback follows.
  static int OnFrameNotSend(nghttp2_session*, const nghttp2_frame* frame, int,
                            void* user_data) {
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    DohClient& self = Self(user_data);
    DohClient::Stream* stream = self.StreamOf(frame->hd.stream_id);
    if (stream != nullptr) self.Finish(*stream, DohClient::Result::kRefused);
    return 0;
  }

  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length,
                          uint32_t* data_flags, nghttp2_data_source* source, void*) {
    auto* stream = static_cast<DohClient::Stream*>(source->ptr);
    const size_t n = std::min(length, stream->query.size() - stream->sent);
    std::memcpy(buf, stream->query.data() + stream->sent, n);
    stream->sent += n;
    if (stream->sent == stream->query.size()) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(n);
  }
};

const char* DohClient::ToString(Result result) {
  switch (result) {
    case Result::kAnswer: return "answer";
    case Result::kHttpStatus: return "HTTP status";
    case Result::kBadContentType: return "content-type";
    case Result::kBadBody: return "body size";
    case Result::kReset: return "stream reset";
    case Result::kRefused: return "stream refused";
  }
  return "?";
}

DohClient::DohClient(DohClientSettings settings, Observer& observer)
    : settings_(std::move(settings)), observer_(observer), allocator_(new Allocator) {
  allocator_->mem = nghttp2_mem{
      &pool_,
      [](size_t size, void* pool) { return static_cast<RecyclingPool*>(pool)->Allocate(size); },
      [](void* block, void* pool) { static_cast<RecyclingPool*>(pool)->Free(block); },
      [](size_t count, size_t size, void* pool) {
        void* block = static_cast<RecyclingPool*>(pool)->Allocate(count * size);
        if (block != nullptr) std::memset(block, 0, count * size);
        return block;
      },
      [](void* block, size_t size, void* pool) {
        return static_cast<RecyclingPool*>(pool)->Reallocate(block, size);
      }};
  nghttp2_session_callbacks_new(&callbacks_);
  nghttp2_session_callbacks_set_on_header_callback(callbacks_, &Callbacks::OnHeader);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks_, &Callbacks::OnDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks_, &Callbacks::OnStreamClose);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks_, &Callbacks::OnFrameRecv);
  nghttp2_session_callbacks_set_on_frame_not_send_callback(callbacks_,
                                                           &Callbacks::OnFrameNotSend);
  nghttp2_option_new(&option_);
  // A client needs no closed streams (they only serve priorities): without
  // this nghttp2 keeps some, and their memory, after each stream ends.
  nghttp2_option_set_no_closed_streams(option_, 1);
  const size_t slots = std::min<size_t>(settings_.max_streams, kNoSlot);
  streams_.resize(slots);
  free_slots_.reserve(slots);
  finished_.reserve(slots);
  for (size_t i = slots; i-- > 0;) {
    streams_[i].slot = static_cast<uint16_t>(i);
    streams_[i].query.reserve(512);
    streams_[i].body.reserve(1536);
    free_slots_.push_back(static_cast<uint16_t>(i));
  }
  slot_of_tag_.reset(new uint16_t[65536]);
  std::fill_n(slot_of_tag_.get(), 65536, kNoSlot);
}

DohClient::~DohClient() {
  Reset();
  nghttp2_option_del(option_);
  nghttp2_session_callbacks_del(callbacks_);
}

absl::Status DohClient::Start() {
  Reset();
  if (!reserved_) {
    // Once, at the first connect (a connection never used costs nothing):
    // the blocks nghttp2 takes per open stream (its stream, the HEADERS and
    // DATA items, the header array: measured on nghttp2 1.52 as about one
    // 64-byte, three 256-byte and one 512-byte block) for every slot, with
    // room to spare, so that the peak of concurrent streams is reached
    // without malloc on the query path.
    reserved_ = true;
    const size_t slots = streams_.size();
    pool_.Reserve(64, 2 * slots);
    pool_.Reserve(128, 2 * slots);
    pool_.Reserve(256, 4 * slots);
    pool_.Reserve(512, 2 * slots);
  }
  if (nghttp2_session_client_new3(&session_, callbacks_, this, option_, &allocator_->mem) != 0) {
    session_ = nullptr;
    return absl::ResourceExhaustedError("nghttp2_session_client_new3 failed");
  }
  const nghttp2_settings_entry entries[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      // Our streams carry DNS messages: a window of one maximal message.
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 65535},
      // The server opens no streams to us.
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 0},
  };
  if (nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, entries, std::size(entries)) != 0) {
    return absl::InternalError("nghttp2_submit_settings failed");
  }
  return absl::OkStatus();
}

void DohClient::Reset() {
  ++epoch_;
  if (session_ != nullptr) nghttp2_session_del(session_);
  session_ = nullptr;
  for (Stream& stream : streams_) {
    if (stream.in_use) FreeSlot(stream);
  }
  finished_.clear();
  going_away_ = false;
  error_.clear();
}

DohClient::Stream* DohClient::StreamOf(int32_t stream_id) {
  if (session_ == nullptr) return nullptr;
  auto* stream = static_cast<Stream*>(nghttp2_session_get_stream_user_data(session_, stream_id));
  if (stream != nullptr) return stream;
  // A request whose HEADERS never went out has no nghttp2 stream yet.
  for (Stream& candidate : streams_) {
    if (candidate.in_use && candidate.stream_id == stream_id) return &candidate;
  }
  return nullptr;
}

bool DohClient::Submit(uint16_t tag, std::span<const uint8_t> query) {
  if (session_ == nullptr || going_away_ || free_slots_.empty() ||
      slot_of_tag_[tag] != kNoSlot || query.size() < 12 || query.size() > kMaxDohMessage) {
    return false;
  }
  Stream& stream = streams_[free_slots_.back()];
  stream.query.assign(query.begin(), query.end());  // grows only past 512 bytes, once
  stream.query[0] = stream.query[1] = 0;              // RFC 8484 §4.1: ID 0
  stream.sent = 0;
  stream.status = 0;
  stream.content_type_ok = false;
  stream.failed = false;
  stream.finished = false;
  stream.body.clear();
  stream.tag = tag;
  const std::string length = absl::StrCat(query.size());  // at most 5 digits: SSO, no heap
  stream.content_length_size = static_cast<uint8_t>(length.size());
  std::memcpy(stream.content_length, length.data(), length.size());

  // The values live in settings_ and the slot until the stream closes:
  // nghttp2 need not copy them.
  const auto nv = [](std::string_view name, std::string_view value) {
    return nghttp2_nv{const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(name.data())),
                      const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(value.data())),
                      name.size(), value.size(),
                      NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
  };
  const nghttp2_nv headers[] = {
      nv(":method", "POST"),
      nv(":scheme", "https"),
      nv(":authority", settings_.authority),
      nv(":path", settings_.path),
      nv("content-type", "application/dns-message"),
      nv("accept", "application/dns-message"),
      nv("content-length", std::string_view(stream.content_length, stream.content_length_size)),
  };
  nghttp2_data_provider body;
  body.source.ptr = &stream;
  body.read_callback = &Callbacks::ReadBody;
  const int32_t stream_id =
      nghttp2_submit_request(session_, nullptr, headers, std::size(headers), &body, &stream);
  if (stream_id < 0) {
    // 2^30 requests on this connection: no stream ID is left (RFC 9113
    // §5.1.1). Like a GOAWAY: no new streams; the pool opens another
    // connection, and this one closes when its last stream ends.
    if (stream_id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE) going_away_ = true;
    return false;
  }
  stream.stream_id = stream_id;
  stream.in_use = true;
  free_slots_.pop_back();
  slot_of_tag_[tag] = stream.slot;
  ++active_;
  return true;
}

void DohClient::Cancel(uint16_t tag) {
  const uint16_t slot = slot_of_tag_[tag];
  if (slot == kNoSlot) return;
  Stream& stream = streams_[slot];
  if (session_ != nullptr && stream.stream_id > 0 && !stream.finished) {
    nghttp2_session_set_stream_user_data(session_, stream.stream_id, nullptr);
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream.stream_id, NGHTTP2_CANCEL);
  }
  // A finished one waiting in finished_ is skipped by Deliver (not in use,
  // or in use again by a stream that has not finished).
  FreeSlot(stream);
}

void DohClient::FreeSlot(Stream& stream) {
  slot_of_tag_[stream.tag] = kNoSlot;
  stream.in_use = false;
  stream.finished = false;
  stream.stream_id = 0;
  free_slots_.push_back(stream.slot);
  --active_;
}

void DohClient::Finish(Stream& stream, Result result) {
  if (stream.finished) return;
  stream.finished = true;
  stream.result = result;
  finished_.push_back(stream.slot);
}

// Reports finished streams outside nghttp2's callbacks: an observer may
// submit (or reset everything) from its report.
void DohClient::Deliver() {
  if (delivering_) return;  // a Submit from a report drains later
  delivering_ = true;
  const uint64_t epoch = epoch_;
  for (size_t i = 0; i < finished_.size() && epoch == epoch_; ++i) {
    Stream& stream = streams_[finished_[i]];
    if (!stream.in_use || !stream.finished) continue;
    const uint16_t tag = stream.tag;
    const Result result = stream.result;
    const int status = stream.status;
    std::span<uint8_t> body;
    if (result == Result::kAnswer) body = stream.body;
    // Freed before the report, so the tag can be bound again from it. The
    // body's bytes stay put: a Submit from the report takes this slot but
    // only clears the body (no bytes move), and nothing is received until
    // the report returns.
    FreeSlot(stream);
    observer_.OnResponse(tag, result, status, body);
  }
  if (epoch == epoch_) finished_.clear();
  delivering_ = false;
}

bool DohClient::Receive(std::span<const uint8_t> data) {
  if (session_ == nullptr) return false;
  const ssize_t n = nghttp2_session_mem_recv(session_, data.data(), data.size());
  if (n < 0) {
    error_ = absl::StrCat("HTTP/2: ", nghttp2_strerror(static_cast<int>(n)));
    return false;
  }
  Deliver();
  return true;
}

bool DohClient::Drain(std::vector<uint8_t>& out) {
  if (session_ == nullptr) return true;
  while (true) {
    const uint8_t* data = nullptr;
    const ssize_t n = nghttp2_session_mem_send(session_, &data);
    if (n < 0) {
      error_ = absl::StrCat("HTTP/2: ", nghttp2_strerror(static_cast<int>(n)));
      return false;
    }
    if (n == 0) break;
    out.insert(out.end(), data, data + n);
  }
  Deliver();
  return true;
}

bool DohClient::WantsWrite() const {
  return session_ != nullptr && nghttp2_session_want_write(session_) != 0;
}

bool DohClient::Finished() const {
  return session_ == nullptr ||
         (nghttp2_session_want_read(session_) == 0 && nghttp2_session_want_write(session_) == 0);
}

uint32_t DohClient::peer_max_streams() const {
  if (session_ == nullptr) return 0;
  return nghttp2_session_get_remote_settings(session_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
}

}  // namespace dotproxy::http
