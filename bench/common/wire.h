#pragma once
// Builds DNS wire messages for the micro-benchmarks (bench/<sub>/*_benchmark.cc).
//
// Test-data helpers only: they allocate and are called outside the timed
// loops. Every multi-byte field is written big-endian (network order), as on
// the wire. Not thread-safe by design (no shared state; use per thread).

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dotproxy::bench {

inline void PutU16(std::vector<uint8_t>& out, uint16_t v) {  // big-endian
  out.push_back(static_cast<uint8_t>(v >> 8));
  out.push_back(static_cast<uint8_t>(v));
}
inline void PutU32(std::vector<uint8_t>& out, uint32_t v) {  // big-endian
  PutU16(out, static_cast<uint16_t>(v >> 16));
  PutU16(out, static_cast<uint16_t>(v));
}

// "www.example.com" -> 3www7example3com0 (uncompressed, as clients send it).
inline void PutName(std::vector<uint8_t>& out, std::string_view name) {
  while (!name.empty()) {
    const size_t dot = name.find('.');
    const std::string_view label = name.substr(0, dot);
    out.push_back(static_cast<uint8_t>(label.size()));
    out.insert(out.end(), label.begin(), label.end());
    if (dot == std::string_view::npos) break;
    name.remove_prefix(dot + 1);
  }
  out.push_back(0);
}

// An EDNS(0) OPT RR (RFC 6891 §6.1.2) with no options: root owner, TYPE 41,
// CLASS = UDP payload size, TTL = extended RCODE/version/DO flag, RDLEN 0.
inline void PutOpt(std::vector<uint8_t>& out, uint16_t udp_size, bool dnssec_ok) {
  out.push_back(0);
  PutU16(out, 41);
  PutU16(out, udp_size);
  PutU32(out, dnssec_ok ? 0x00008000u : 0);
  PutU16(out, 0);
}

// A standard query (RD=1, QTYPE A, QCLASS IN) for `name`, with an OPT RR
// advertising 1232 bytes when `edns` (what dnsperf and most stubs send).
inline std::vector<uint8_t> MakeQuery(std::string_view name, uint16_t id, bool edns) {
  std::vector<uint8_t> q;
  PutU16(q, id);
  PutU16(q, 0x0100);     // QR=0, opcode QUERY, RD=1
  PutU16(q, 1);          // QDCOUNT
  PutU16(q, 0);          // ANCOUNT
  PutU16(q, 0);          // NSCOUNT
  PutU16(q, edns ? 1 : 0);  // ARCOUNT
  PutName(q, name);
  PutU16(q, 1);  // A
  PutU16(q, 1);  // IN
  if (edns) PutOpt(q, 1232, false);
  return q;
}

// The answer an upstream gives to MakeQuery(name, id, edns): one A record
// (owner compressed to the question, TTL 300, 192.0.2.1), OPT when `edns`.
inline std::vector<uint8_t> MakeAnswer(std::string_view name, uint16_t id, bool edns) {
  std::vector<uint8_t> a;
  PutU16(a, id);
  PutU16(a, 0x8180);  // QR=1, RD=1, RA=1, NOERROR
  PutU16(a, 1);
  PutU16(a, 1);
  PutU16(a, 0);
  PutU16(a, edns ? 1 : 0);
  PutName(a, name);
  PutU16(a, 1);
  PutU16(a, 1);
  PutU16(a, 0xc00c);  // owner: pointer to the QNAME at offset 12
  PutU16(a, 1);
  PutU16(a, 1);
  PutU32(a, 300);
  PutU16(a, 4);
  a.insert(a.end(), {192, 0, 2, 1});
  if (edns) PutOpt(a, 1232, false);
  return a;
}

// `count` distinct names shaped like the load benchmark's: q<i>.bench.test.
inline std::vector<std::string> MakeNames(size_t count, std::string_view prefix = "q") {
  std::vector<std::string> names;
  names.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    names.push_back(std::string(prefix) + std::to_string(i) + ".bench.test");
  }
  return names;
}

}  // namespace dotproxy::bench
