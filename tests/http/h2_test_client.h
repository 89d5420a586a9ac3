#pragma once
// Test helpers for the DoH server: DNS messages, base64url, and an nghttp2
// client session in memory that talks to a server-side object.

#include <nghttp2/nghttp2.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace dotproxy::http::h2test {

// A query for example.com/A with `id`.
inline std::vector<uint8_t> Query(uint16_t id = 0) {
  std::vector<uint8_t> q = {static_cast<uint8_t>(id >> 8), static_cast<uint8_t>(id), 0x01, 0x00,
                            0, 1, 0, 0, 0, 0, 0, 0};
  const uint8_t name[] = {7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0, 0, 1, 0, 1};
  q.insert(q.end(), std::begin(name), std::end(name));
  return q;
}

inline void Append32(std::vector<uint8_t>& v, uint32_t x) {
  for (int shift = 24; shift >= 0; shift -= 8) v.push_back(static_cast<uint8_t>(x >> shift));
}

// An answer to Query(id) with one A record per TTL in `ttls`, and an SOA
// in the authority section when `soa_ttl` is set.
inline std::vector<uint8_t> AnswerFor(uint16_t id, std::vector<uint32_t> ttls, uint8_t rcode = 0,
                               int64_t soa_ttl = -1, uint32_t soa_minimum = 0) {
  std::vector<uint8_t> a = Query(id);
  a[2] |= 0x80;
  a[3] = static_cast<uint8_t>(0x80 | rcode);
  a[7] = static_cast<uint8_t>(ttls.size());
  a[9] = soa_ttl >= 0 ? 1 : 0;
  for (uint32_t ttl : ttls) {
    const uint8_t head[] = {0xc0, 0x0c, 0, 1, 0, 1};
    a.insert(a.end(), std::begin(head), std::end(head));
    Append32(a, ttl);
    const uint8_t rdata[] = {0, 4, 192, 0, 2, 1};
    a.insert(a.end(), std::begin(rdata), std::end(rdata));
  }
  if (soa_ttl >= 0) {
    const uint8_t head[] = {0xc0, 0x0c, 0, 6, 0, 1};
    a.insert(a.end(), std::begin(head), std::end(head));
    Append32(a, static_cast<uint32_t>(soa_ttl));
    a.push_back(0);
    a.push_back(2 + 2 + 20);
    const uint8_t names[] = {0xc0, 0x0c, 0xc0, 0x0c};
    a.insert(a.end(), std::begin(names), std::end(names));
    for (uint32_t field : {1u, 7200u, 900u, 1209600u}) Append32(a, field);
    Append32(a, soa_minimum);
  }
  return a;
}

inline std::string Base64Url(const std::vector<uint8_t>& data) {
  static const char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  uint32_t bits = 0;
  int count = 0;
  for (uint8_t byte : data) {
    bits = bits << 8 | byte;
    count += 8;
    while (count >= 6) {
      count -= 6;
      out.push_back(kAlphabet[(bits >> count) & 63]);
    }
  }
  if (count > 0) out.push_back(kAlphabet[(bits << (6 - count)) & 63]);
  return out;
}

struct Response {
  int status = 0;
  std::map<std::string, std::string> headers;
  std::vector<uint8_t> body;
  bool closed = false;
  uint32_t close_error = 0;
};

// The client side: an nghttp2 client session with its own callbacks.
class Client {
 public:
  Client() {
    nghttp2_session_callbacks* callbacks = nullptr;
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, OnHeader);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, OnData);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, OnClose);
    nghttp2_session_client_new(&session_, callbacks, this);
    nghttp2_session_callbacks_del(callbacks);
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, nullptr, 0);
  }
  ~Client() { nghttp2_session_del(session_); }

  int32_t Request(const std::string& method, const std::string& path,
                  std::vector<std::pair<std::string, std::string>> extra = {},
                  const std::vector<uint8_t>* body = nullptr) {
    std::vector<std::pair<std::string, std::string>> fields = {
        {":method", method}, {":scheme", "https"}, {":authority", "localhost"}, {":path", path}};
    fields.insert(fields.end(), extra.begin(), extra.end());
    std::vector<nghttp2_nv> nva;
    for (auto& [name, value] : fields) {
      nva.push_back({reinterpret_cast<uint8_t*>(name.data()), reinterpret_cast<uint8_t*>(value.data()),
                     name.size(), value.size(), NGHTTP2_NV_FLAG_NONE});
    }
    if (body == nullptr) {
      return nghttp2_submit_request(session_, nullptr, nva.data(), nva.size(), nullptr, nullptr);
    }
    auto* source = new Body{*body, 0};
    nghttp2_data_provider provider;
    provider.source.ptr = source;
    provider.read_callback = ReadBody;
    const int32_t id = nghttp2_submit_request(session_, nullptr, nva.data(), nva.size(), &provider, nullptr);
    bodies_[id].reset(source);
    return id;
  }
  int32_t Get(const std::vector<uint8_t>& query, const std::string& path = "/dns-query") {
    return Request("GET", path + "?dns=" + Base64Url(query), {{"accept", "application/dns-message"}});
  }
  int32_t Post(const std::vector<uint8_t>& query, const std::string& type = "application/dns-message") {
    return Request("POST", "/dns-query", {{"content-type", type}}, &query);
  }
  void Reset(int32_t id) { nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL); }
  void GoAway() { nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, nullptr, 0); }

  // Moves bytes both ways until neither side has anything to say. `server`
  // has Receive(span) (a result enum) and WriteOutput(span) -> bytes.
  template <typename Server>
  void Pump(Server& server) {
    for (int round = 0; round < 1000; ++round) {
      bool moved = false;
      const uint8_t* data = nullptr;
      ssize_t n;
      while ((n = nghttp2_session_mem_send(session_, &data)) > 0) {
        moved = true;
        last_receive_ = static_cast<int>(server.Receive({data, static_cast<size_t>(n)}));
      }
      uint8_t buffer[4096];
      size_t out;
      while ((out = server.WriteOutput(buffer)) > 0) {
        moved = true;
        ASSERT_GE(nghttp2_session_mem_recv(session_, buffer, out), 0);
        if (out < sizeof(buffer)) break;
      }
      if (!moved) return;
    }
    FAIL() << "the sessions kept talking";
  }

  std::map<int32_t, Response> responses;
  int last_receive_ = 0;  // the server's last Receive result
  nghttp2_session* session_ = nullptr;

 private:
  struct Body {
    std::vector<uint8_t> data;
    size_t sent;
  };
  static Client& Of(void* user_data) { return *static_cast<Client*>(user_data); }
  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t name_length,
                      const uint8_t* value, size_t value_length, uint8_t, void* user_data) {
    Response& r = Of(user_data).responses[frame->hd.stream_id];
    std::string n(reinterpret_cast<const char*>(name), name_length);
    std::string v(reinterpret_cast<const char*>(value), value_length);
    if (n == ":status") r.status = std::stoi(v);
    r.headers[n] = v;
    return 0;
  }
  static int OnData(nghttp2_session*, uint8_t, int32_t id, const uint8_t* data, size_t length, void* user_data) {
    Response& r = Of(user_data).responses[id];
    r.body.insert(r.body.end(), data, data + length);
    return 0;
  }
  static int OnClose(nghttp2_session*, int32_t id, uint32_t error, void* user_data) {
    Response& r = Of(user_data).responses[id];
    r.closed = true;
    r.close_error = error;
    return 0;
  }
  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buffer, size_t length, uint32_t* flags,
                          nghttp2_data_source* source, void*) {
    auto* body = static_cast<Body*>(source->ptr);
    const size_t take = std::min(length, body->data.size() - body->sent);
    if (take > 0) std::memcpy(buffer, body->data.data() + body->sent, take);
    body->sent += take;
    if (body->sent == body->data.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(take);
  }
  std::map<int32_t, std::unique_ptr<Body>> bodies_;
};


}  // namespace dotproxy::http::h2test
