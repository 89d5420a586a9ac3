#pragma once
// The DoH front end's counters as one X-list (name, help), so that
// http::DohServerStats and the shard's metrics::ShardStats rows (and with
// them the SIGUSR1 report and /metrics) are declared once. No includes:
// metrics/stats.h takes it without depending on the rest of http.

#define DOTPROXY_DOH_SERVER_COUNTERS(X)                                              \
  X(doh_requests, "DoH request streams opened")                                         \
  X(doh_queries, "DoH queries handed to the resolver")                                  \
  X(doh_answers, "DoH answers sent (200)")                                              \
  X(doh_status_400, "DoH requests answered 400: bad dns= parameter, empty body, not a query") \
  X(doh_status_404, "DoH requests answered 404: unknown path")                          \
  X(doh_status_405, "DoH requests answered 405: method other than GET or POST")         \
  X(doh_status_413, "DoH requests answered 413: body over the largest query")           \
  X(doh_status_414, "DoH requests answered 414: dns= parameter over the largest query") \
  X(doh_status_415, "DoH requests answered 415: content type not application/dns-message") \
  X(doh_status_431, "DoH requests answered 431: headers over the limit")                \
  X(doh_status_503, "DoH queries ended without an answer (503)")                        \
  X(doh_refused_streams, "DoH streams refused for lack of a free slot (RST_STREAM REFUSED_STREAM)") \
  X(doh_reset_in_flight, "DoH streams reset by the client while their query was out")   \
  X(doh_late_answers, "DoH answers dropped: their stream was gone")                     \
  X(doh_protocol_errors, "DoH connections ended by broken HTTP/2 framing or memory exhausted") \
  X(doh_goaways, "DoH connections ended by the client's GOAWAY")
