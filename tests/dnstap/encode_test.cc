#include "dotproxy/dnstap/encode.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <vector>

#include "dnstap.pb-c.h"

namespace dotproxy::dnstap {
namespace {

TEST(EncodeEventTest, ClientQueryDecodesBack) {
  sockaddr_in client{};
  client.sin_family = AF_INET;
  client.sin_port = htons(40000);
  inet_pton(AF_INET, "127.0.0.9", &client.sin_addr);
  sockaddr_in6 local{};
  local.sin6_family = AF_INET6;
  local.sin6_port = htons(53);
  inet_pton(AF_INET6, "::1", &local.sin6_addr);

  EventHeader header;
  header.type = MessageType::kClientQuery;
  header.protocol = SocketProtocol::kTcp;
  header.query_address = EventAddress::From(reinterpret_cast<sockaddr*>(&client));
  header.response_address = EventAddress::From(reinterpret_cast<sockaddr*>(&local));
  header.query_time_ns = 5'000'000'123;
  const std::vector<uint8_t> wire = {0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1};

  std::vector<uint8_t> out = {0xaa};  // appended after what is there
  const size_t size = EncodeEvent(header, wire, "host1", "dotproxy 1", 1'000'000'000, out);
  ASSERT_EQ(out.size(), 1 + size);

  Dnstap__Dnstap* d = dnstap__dnstap__unpack(nullptr, size, out.data() + 1);
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->type, DNSTAP__DNSTAP__TYPE__MESSAGE);
  ASSERT_TRUE(d->has_identity);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(d->identity.data), d->identity.len), "host1");
  EXPECT_EQ(std::string(reinterpret_cast<char*>(d->version.data), d->version.len), "dotproxy 1");
  const Dnstap__Message* m = d->message;
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->type, DNSTAP__MESSAGE__TYPE__CLIENT_QUERY);
  EXPECT_EQ(m->socket_family, DNSTAP__SOCKET_FAMILY__INET);  // from the query address
  EXPECT_EQ(m->socket_protocol, DNSTAP__SOCKET_PROTOCOL__TCP);
  ASSERT_TRUE(m->has_query_address);
  ASSERT_EQ(m->query_address.len, 4u);
  EXPECT_EQ(0, std::memcmp(m->query_address.data, &client.sin_addr, 4));
  EXPECT_EQ(m->query_port, 40000u);
  ASSERT_EQ(m->response_address.len, 16u);
  EXPECT_EQ(m->response_port, 53u);
  EXPECT_TRUE(m->has_query_time_sec);
  EXPECT_EQ(m->query_time_sec, 6u);
  EXPECT_EQ(m->query_time_nsec, 123u);
  EXPECT_FALSE(m->has_response_time_sec);
  ASSERT_TRUE(m->has_query_message);
  EXPECT_EQ(std::vector<uint8_t>(m->query_message.data, m->query_message.data + m->query_message.len),
            wire);
  EXPECT_FALSE(m->has_response_message);
  dnstap__dnstap__free_unpacked(d, nullptr);
}

TEST(EncodeEventTest, ForwarderResponseCarriesBothTimesAndDot) {
  EventHeader header;
  header.type = MessageType::kForwarderResponse;
  header.protocol = SocketProtocol::kDot;
  sockaddr_in upstream{};
  upstream.sin_family = AF_INET;
  upstream.sin_port = htons(853);
  header.response_address = EventAddress::From(reinterpret_cast<sockaddr*>(&upstream));
  header.query_time_ns = 1;
  header.response_time_ns = 2;
  const std::vector<uint8_t> wire(40, 7);
  std::vector<uint8_t> out;
  const size_t size = EncodeEvent(header, wire, "", "", 0, out);
  Dnstap__Dnstap* d = dnstap__dnstap__unpack(nullptr, size, out.data());
  ASSERT_NE(d, nullptr);
  EXPECT_FALSE(d->has_identity);
  const Dnstap__Message* m = d->message;
  EXPECT_EQ(m->type, DNSTAP__MESSAGE__TYPE__FORWARDER_RESPONSE);
  EXPECT_EQ(m->socket_protocol, DNSTAP__SOCKET_PROTOCOL__DOT);
  EXPECT_EQ(m->socket_family, DNSTAP__SOCKET_FAMILY__INET);
  EXPECT_FALSE(m->has_query_address);
  EXPECT_EQ(m->response_port, 853u);
  EXPECT_EQ(m->response_time_nsec, 2u);
  ASSERT_TRUE(m->has_response_message);
  EXPECT_EQ(m->response_message.len, 40u);
  dnstap__dnstap__free_unpacked(d, nullptr);
}

// A DoH client's query (the forwarder tags TLS clients with an HTTP/2
// stream as DOH): the schema's value 4.
TEST(EncodeEventTest, ClientQueryOverDohCarriesDoh) {
  EventHeader header;
  header.type = MessageType::kClientQuery;
  header.protocol = SocketProtocol::kDoh;
  const std::vector<uint8_t> wire(30, 1);
  std::vector<uint8_t> out;
  const size_t size = EncodeEvent(header, wire, "", "", 0, out);
  Dnstap__Dnstap* d = dnstap__dnstap__unpack(nullptr, size, out.data());
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->message->socket_protocol, DNSTAP__SOCKET_PROTOCOL__DOH);
  dnstap__dnstap__free_unpacked(d, nullptr);
}

TEST(ParseMessageTypesTest, WordsAndErrors) {
  EXPECT_EQ(*ParseMessageTypes("client-query,forwarder-response"),
            Bit(MessageType::kClientQuery) | Bit(MessageType::kForwarderResponse));
  EXPECT_EQ(*ParseMessageTypes("client-query,client-response,forwarder-query,forwarder-response"),
            kAllMessages);
  EXPECT_FALSE(ParseMessageTypes("client-query,resolver-query").ok());
  EXPECT_FALSE(ParseMessageTypes("").ok());
}

}  // namespace
}  // namespace dotproxy::dnstap
