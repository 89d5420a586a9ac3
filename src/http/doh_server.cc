#include "dotproxy/http/doh_server.h"

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "dotproxy/dns/message.h"
#include "src/http/bounded_pool.h"

namespace dotproxy::http {

// One request stream. A slot is taken when the request's HEADERS begin and
// freed when both the stream has closed and its query (if it was handed
// up) has ended with QueryDone: a client that resets streams cannot have
// more queries out than there are slots.
struct DohServerSession::Stream {
  enum class Method : uint8_t { kNone, kGet, kPost, kOther };
  int32_t id = 0;  // 0: slot free
  uint32_t slot = 0;
  Method method = Method::kNone;
  bool path_ok = false;
  bool dns_seen = false;          // GET: a dns= parameter
  bool content_type_ok = false;   // POST: application/dns-message
  bool responded = false;         // a response (answer or error) submitted
  bool request_ended = false;     // END_STREAM received
  bool handed_up = false;         // with the sink until QueryDone
  bool closed = false;            // nghttp2 closed the stream
  int dns_length = 0;             // DecodeBase64Url's result for dns=
  uint32_t header_bytes = 0;
  uint64_t content_length = UINT64_MAX;  // unset
  size_t query_length = 0;        // POST body so far
  uint8_t* query = nullptr;       // max_query_bytes, in slot_bytes_
  uint8_t* answer = nullptr;      // in the pool until framed
  size_t answer_length = 0;
  size_t answer_sent = 0;
};

namespace {

void* PoolMalloc(size_t size, void* pool) { return static_cast<BoundedPool*>(pool)->Allocate(size); }
void PoolFree(void* block, void* pool) { static_cast<BoundedPool*>(pool)->Free(block); }
void* PoolCalloc(size_t count, size_t size, void* pool) {
  return static_cast<BoundedPool*>(pool)->AllocateZeroed(count, size);
}
void* PoolRealloc(void* block, size_t size, void* pool) {
  BoundedPool* p = static_cast<BoundedPool*>(pool);
  if (size == 0) {
    p->Free(block);
    return nullptr;
  }
  return p->Reallocate(block, size);
}

// Single writer: a relaxed load and store, not a locked increment.
void Bump(std::atomic<uint64_t>& counter) {
  counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

std::string_view View(const uint8_t* data, size_t length) {
  return {reinterpret_cast<const char*>(data), length};
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (dns::AsciiLower(static_cast<uint8_t>(a[i])) != dns::AsciiLower(static_cast<uint8_t>(b[i]))) {
      return false;
    }
  }
  return true;
}

// "application/dns-message", optionally with parameters (RFC 9110 §8.3.1).
bool IsDnsMessageType(std::string_view value) {
  const size_t end = value.find(';');
  std::string_view type = value.substr(0, end);
  while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) type.remove_suffix(1);
  while (!type.empty() && (type.front() == ' ' || type.front() == '\t')) type.remove_prefix(1);
  return EqualsIgnoreCase(type, "application/dns-message");
}

nghttp2_nv Header(std::string_view name, std::string_view value) {
  return {reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
          reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
          NGHTTP2_NV_FLAG_NONE};
}

}  // namespace

// nghttp2's callbacks, reaching the session through user_data.
struct DohCallbacks {
  static DohServerSession& Of(void* user_data) { return *static_cast<DohServerSession*>(user_data); }
  static DohServerSession::Stream* StreamOf(nghttp2_session* session, int32_t id) {
    return static_cast<DohServerSession::Stream*>(nghttp2_session_get_stream_user_data(session, id));
  }

  static int BeginHeaders(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) {
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    DohServerSession& self = Of(user_data);
    Bump(self.stats_.doh_requests);
    DohServerSession::Stream* stream = self.TakeSlot(frame->hd.stream_id);
    if (stream == nullptr) {
      // Every slot holds a query still out (streams reset by the client
      // included): the client may retry this one later.
      Bump(self.stats_.doh_refused_streams);
      nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                NGHTTP2_REFUSED_STREAM);
      return 0;
    }
    nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, stream);
    return 0;
  }

  static int OnHeader(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name,
                      size_t name_length, const uint8_t* value, size_t value_length,
                      uint8_t /*flags*/, void* user_data) {
    DohServerSession::Stream* stream = StreamOf(session, frame->hd.stream_id);
    if (stream == nullptr || stream->responded) return 0;
    DohServerSession& self = Of(user_data);
    stream->header_bytes += static_cast<uint32_t>(std::min<size_t>(name_length + value_length, UINT32_MAX / 2));
    if (stream->header_bytes > self.options_.max_header_bytes) {
      self.RespondError(*stream, 431);
      return 0;
    }
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
      return 0;  // trailers: counted, otherwise ignored
    }
    self.OnHeader(*stream, View(name, name_length), View(value, value_length));
    return 0;
  }

  static int OnFrame(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) {
    DohServerSession& self = Of(user_data);
    if (frame->hd.type == NGHTTP2_GOAWAY) {
      // The client is leaving: the streams it opened are still answered
      // (nghttp2 keeps them; the session ends once they have closed).
      Bump(self.stats_.doh_goaways);
      self.client_going_away_ = true;
      return 0;
    }
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
    DohServerSession::Stream* stream = StreamOf(session, frame->hd.stream_id);
    if (stream == nullptr) return 0;
    const bool ended = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (ended) stream->request_ended = true;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
      self.OnHeadersEnd(*stream);
    }
    if (ended) self.OnRequestEnd(*stream);
    return 0;
  }

  static int OnData(nghttp2_session* session, uint8_t /*flags*/, int32_t stream_id,
                    const uint8_t* data, size_t length, void* user_data) {
    DohServerSession::Stream* stream = StreamOf(session, stream_id);
    if (stream != nullptr) Of(user_data).OnBody(*stream, {data, length});
    return 0;
  }

  static int OnClose(nghttp2_session* /*session*/, int32_t stream_id, uint32_t /*error_code*/,
                     void* user_data) {
    Of(user_data).OnStreamClose(stream_id);
    return 0;
  }

  static ssize_t ReadAnswer(nghttp2_session* /*session*/, int32_t /*stream_id*/, uint8_t* buffer,
                            size_t length, uint32_t* data_flags, nghttp2_data_source* source,
                            void* user_data) {
    auto* stream = static_cast<DohServerSession::Stream*>(source->ptr);
    const size_t take = std::min(length, stream->answer_length - stream->answer_sent);
    std::memcpy(buffer, stream->answer + stream->answer_sent, take);
    stream->answer_sent += take;
    if (stream->answer_sent == stream->answer_length) {
      *data_flags |= NGHTTP2_DATA_FLAG_EOF;
      // Framed: nghttp2 holds its own copy now.
      Of(user_data).pool_->Free(stream->answer);
      stream->answer = nullptr;
    }
    return static_cast<ssize_t>(take);
  }

  // Made once per process (malloc, at the first connection), shared after.
  static const nghttp2_session_callbacks* Get() {
    static nghttp2_session_callbacks* callbacks = [] {
      nghttp2_session_callbacks* c = nullptr;
      nghttp2_session_callbacks_new(&c);
      nghttp2_session_callbacks_set_on_begin_headers_callback(c, BeginHeaders);
      nghttp2_session_callbacks_set_on_header_callback(c, OnHeader);
      nghttp2_session_callbacks_set_on_frame_recv_callback(c, OnFrame);
      nghttp2_session_callbacks_set_on_data_chunk_recv_callback(c, OnData);
      nghttp2_session_callbacks_set_on_stream_close_callback(c, OnClose);
      return c;
    }();
    return callbacks;
  }
};

DohServerSession::DohServerSession(const DohServerOptions& options)
    : options_(options),
      stats_(options.stats != nullptr ? *options.stats : own_counters_.Refs()),
      pool_(std::make_unique<BoundedPool>(options.pool_bytes)),
      slots_(std::max<uint32_t>(options.max_concurrent_streams, 1)),
      query_bytes_(new uint8_t[slots_.size() * options.max_query_bytes]) {
  free_slots_.reserve(slots_.size());
  for (uint32_t i = static_cast<uint32_t>(slots_.size()); i-- > 0;) {
    slots_[i].slot = i;
    slots_[i].query = query_bytes_.get() + i * options_.max_query_bytes;
    free_slots_.push_back(i);
  }
  nghttp2_option_new(&option_);
  // Closed streams are not kept for the priority tree (RFC 7540
  // priorities are off: SETTINGS_NO_RFC7540_PRIORITIES below).
  nghttp2_option_set_no_closed_streams(option_, 1);
}

DohServerSession::~DohServerSession() {
  Reset();
  nghttp2_option_del(option_);
}

absl::Status DohServerSession::Start(DohQuerySink* sink) {
  if (session_ != nullptr) return absl::FailedPreconditionError("DoH session already started");
  if (!pool_->ok()) return absl::ResourceExhaustedError("DoH session: cannot reserve its pool");
  sink_ = sink;
  failed_ = false;
  client_going_away_ = false;
  nghttp2_mem mem{pool_.get(), PoolMalloc, PoolFree, PoolCalloc, PoolRealloc};
  int rv = nghttp2_session_server_new3(&session_, DohCallbacks::Get(), this, option_, &mem);
  if (rv != 0) {
    session_ = nullptr;
    return absl::ResourceExhaustedError(absl::StrFormat("nghttp2_session_server_new3: %s", nghttp2_strerror(rv)));
  }
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, static_cast<uint32_t>(slots_.size())},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, static_cast<uint32_t>(options_.max_header_bytes)},
      {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
  };
  rv = nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, std::size(settings));
  if (rv != 0) {
    Reset();
    return absl::ResourceExhaustedError(absl::StrFormat("nghttp2_submit_settings: %s", nghttp2_strerror(rv)));
  }
  return absl::OkStatus();
}

void DohServerSession::Reset() {
  if (session_ != nullptr) nghttp2_session_del(session_);  // no close callbacks
  session_ = nullptr;
  pending_ = nullptr;
  pending_length_ = 0;
  free_slots_.clear();
  for (uint32_t i = static_cast<uint32_t>(slots_.size()); i-- > 0;) {
    uint8_t* query = slots_[i].query;
    slots_[i] = Stream{};
    slots_[i].slot = i;
    slots_[i].query = query;
    free_slots_.push_back(i);
  }
  slots_in_use_ = 0;
  queries_in_flight_ = 0;
  pool_->Reset();
}

DohServerSession::ReceiveResult DohServerSession::Receive(std::span<const uint8_t> bytes) {
  if (session_ == nullptr || failed_) return ReceiveResult::kClose;
  const ssize_t rv = nghttp2_session_mem_recv(session_, bytes.data(), bytes.size());
  if (rv < 0) {
    Fail();  // bad preface, flood, out of memory: nothing more to say
    return ReceiveResult::kClose;
  }
  if (client_going_away_) return ReceiveResult::kGoingAway;
  return nghttp2_session_want_read(session_) != 0 ? ReceiveResult::kOk : ReceiveResult::kClose;
}

size_t DohServerSession::WriteOutput(std::span<uint8_t> out) {
  size_t written = 0;
  while (written < out.size()) {
    if (pending_length_ == 0) {
      if (session_ == nullptr || failed_) break;
      const uint8_t* data = nullptr;
      const ssize_t n = nghttp2_session_mem_send(session_, &data);
      if (n < 0) {
        Fail();
        break;
      }
      if (n == 0) break;
      pending_ = data;
      pending_length_ = static_cast<size_t>(n);
    }
    const size_t take = std::min(pending_length_, out.size() - written);
    std::memcpy(out.data() + written, pending_, take);
    pending_ += take;
    pending_length_ -= take;
    written += take;
  }
  return written;
}

bool DohServerSession::has_output() const {
  if (pending_length_ > 0) return true;
  return session_ != nullptr && !failed_ && nghttp2_session_want_write(session_) != 0;
}

bool DohServerSession::alive() const {
  if (session_ == nullptr || failed_) return pending_length_ > 0;
  return pending_length_ > 0 || nghttp2_session_want_read(session_) != 0 ||
         nghttp2_session_want_write(session_) != 0;
}

uint32_t DohServerSession::requests_incomplete() const {
  if (slots_in_use_ == 0) return 0;
  uint32_t count = 0;
  for (const Stream& stream : slots_) {
    if (stream.id != 0 && !stream.closed && !stream.handed_up && !stream.responded) ++count;
  }
  return count;
}

void DohServerSession::Fail() {
  if (!failed_) Bump(stats_.doh_protocol_errors);
  failed_ = true;
}

DohServerSession::Stream* DohServerSession::TakeSlot(int32_t stream_id) {
  if (free_slots_.empty()) return nullptr;
  Stream& stream = slots_[free_slots_.back()];
  free_slots_.pop_back();
  uint8_t* query = stream.query;
  const uint32_t slot = stream.slot;
  stream = Stream{};
  stream.slot = slot;
  stream.query = query;
  stream.id = stream_id;
  ++slots_in_use_;
  return &stream;
}

// Slots in use are few and stream ids unique within a session: a scan is
// cheaper than a map and finds streams nghttp2 has already forgotten.
DohServerSession::Stream* DohServerSession::FindStream(int32_t stream_id) {
  if (stream_id <= 0) return nullptr;
  for (Stream& stream : slots_) {
    if (stream.id == stream_id) return &stream;
  }
  return nullptr;
}

void DohServerSession::ReleaseIfDone(Stream& stream) {
  if (!stream.closed || stream.handed_up) return;
  if (stream.answer != nullptr) pool_->Free(stream.answer);
  stream.answer = nullptr;
  stream.id = 0;
  free_slots_.push_back(stream.slot);
  --slots_in_use_;
}

void DohServerSession::OnHeader(Stream& stream, std::string_view name, std::string_view value) {
  if (name == ":method") {
    stream.method = value == "GET"    ? Stream::Method::kGet
                    : value == "POST" ? Stream::Method::kPost
                                      : Stream::Method::kOther;
  } else if (name == ":path") {
    const size_t question = value.find('?');
    stream.path_ok = value.substr(0, question) == options_.path;
    if (question == std::string_view::npos) return;
    std::string_view query = value.substr(question + 1);
    while (!query.empty()) {
      const size_t amp = query.find('&');
      const std::string_view parameter = query.substr(0, amp);
      if (parameter.substr(0, 4) == "dns=" && !stream.dns_seen) {
        stream.dns_seen = true;
        stream.dns_length = DecodeBase64Url(parameter.substr(4), {stream.query, options_.max_query_bytes});
      }
      if (amp == std::string_view::npos) break;
      query.remove_prefix(amp + 1);
    }
  } else if (name == "content-type") {
    stream.content_type_ok = IsDnsMessageType(value);
  } else if (name == "content-length") {
    // nghttp2 checked the syntax and will check it against the body.
    uint64_t length = 0;
    for (char c : value) {
      if (c < '0' || c > '9' || length > UINT64_MAX / 16) return;
      length = length * 10 + static_cast<uint64_t>(c - '0');
    }
    stream.content_length = length;
  }
}

void DohServerSession::OnHeadersEnd(Stream& stream) {
  if (stream.responded) return;
  if (!stream.path_ok) return RespondError(stream, 404);
  if (stream.method == Stream::Method::kGet) {
    if (!stream.dns_seen || stream.dns_length == -1) return RespondError(stream, 400);
    if (stream.dns_length == -2) return RespondError(stream, 414);
  } else if (stream.method == Stream::Method::kPost) {
    if (!stream.content_type_ok) return RespondError(stream, 415);
    if (stream.content_length != UINT64_MAX && stream.content_length > options_.max_query_bytes) {
      return RespondError(stream, 413);
    }
  } else {
    return RespondError(stream, 405);
  }
}

void DohServerSession::OnBody(Stream& stream, std::span<const uint8_t> data) {
  if (stream.responded || stream.method != Stream::Method::kPost) return;
  if (data.size() > options_.max_query_bytes - stream.query_length) return RespondError(stream, 413);
  if (!data.empty()) std::memcpy(stream.query + stream.query_length, data.data(), data.size());
  stream.query_length += data.size();
}

void DohServerSession::OnRequestEnd(Stream& stream) {
  if (stream.responded) return;
  const size_t length = stream.method == Stream::Method::kGet ? static_cast<size_t>(stream.dns_length)
                                                               : stream.query_length;
  // Too short for a header, or a response (reflection): not a query at all.
  // Anything else is the resolver's to judge (FORMERR, NOTIMP are DNS answers).
  if (length < dns::kHeaderSize || dns::header::IsResponse(stream.query)) {
    return RespondError(stream, 400);
  }
  stream.handed_up = true;
  ++queries_in_flight_;
  Bump(stats_.doh_queries);
  if (sink_ != nullptr) sink_->OnDohQuery(stream.id, {stream.query, length});
}

void DohServerSession::OnStreamClose(int32_t stream_id) {
  Stream* stream = DohCallbacks::StreamOf(session_, stream_id);
  if (stream == nullptr) return;  // refused at its first HEADERS
  stream->closed = true;
  if (stream->handed_up && !stream->responded) Bump(stats_.doh_reset_in_flight);
  ReleaseIfDone(*stream);
}

void DohServerSession::RespondError(Stream& stream, int status) {
  stream.responded = true;
  switch (status) {
    case 400: Bump(stats_.doh_status_400); break;
    case 404: Bump(stats_.doh_status_404); break;
    case 405: Bump(stats_.doh_status_405); break;
    case 413: Bump(stats_.doh_status_413); break;
    case 414: Bump(stats_.doh_status_414); break;
    case 415: Bump(stats_.doh_status_415); break;
    case 431: Bump(stats_.doh_status_431); break;
    default: Bump(stats_.doh_status_503); break;
  }
  char status_text[4];
  absl::SNPrintF(status_text, sizeof(status_text), "%d", status);
  nghttp2_nv headers[] = {
      Header(":status", status_text),
      Header("content-length", "0"),
      Header("allow", "GET, POST"),  // RFC 9110 §15.5.6: required with 405
  };
  // A request body still arriving is read and dropped (nghttp2 keeps the
  // flow-control window open): no RST_STREAM(NO_ERROR) after the response,
  // which RFC 9113 §8.1 allows but curl reports as a stream error.
  nghttp2_submit_response(session_, stream.id, headers, status == 405 ? 3 : 2, nullptr);
}

bool DohServerSession::Answer(int32_t stream_id, std::span<const uint8_t> wire) {
  Stream* stream = FindStream(stream_id);
  if (stream == nullptr || stream->closed || stream->responded || session_ == nullptr || failed_) {
    Bump(stats_.doh_late_answers);
    return false;
  }
  auto* copy = static_cast<uint8_t*>(pool_->Allocate(wire.size()));
  if (copy == nullptr) return false;  // QueryDone answers 503
  if (!wire.empty()) std::memcpy(copy, wire.data(), wire.size());
  char length_text[24];
  char cache_text[32];
  absl::SNPrintF(length_text, sizeof(length_text), "%u", static_cast<uint32_t>(wire.size()));
  absl::SNPrintF(cache_text, sizeof(cache_text), "max-age=%u", DohMaxAge(wire));
  const nghttp2_nv headers[] = {
      Header(":status", "200"),
      Header("content-type", "application/dns-message"),
      Header("content-length", length_text),
      Header("cache-control", cache_text),
  };
  nghttp2_data_provider provider;
  provider.source.ptr = stream;
  provider.read_callback = DohCallbacks::ReadAnswer;
  stream->answer = copy;
  stream->answer_length = wire.size();
  stream->answer_sent = 0;
  if (nghttp2_submit_response(session_, stream_id, headers, std::size(headers), &provider) != 0) {
    pool_->Free(copy);
    stream->answer = nullptr;
    return false;
  }
  stream->responded = true;
  Bump(stats_.doh_answers);
  return true;
}

void DohServerSession::QueryDone(int32_t stream_id) {
  Stream* stream = FindStream(stream_id);
  if (stream == nullptr || !stream->handed_up) return;
  stream->handed_up = false;
  --queries_in_flight_;
  if (!stream->closed && !stream->responded && session_ != nullptr && !failed_) {
    RespondError(*stream, 503);
  }
  ReleaseIfDone(*stream);
}

}  // namespace dotproxy::http
