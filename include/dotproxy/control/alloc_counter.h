#pragma once
// Counts heap allocations made on shard threads, so "no allocation per
// query" is something a test can check on the real binary (SIGUSR1 prints
// the counters; tests/e2e compares them before and after a query loop).
//
// The binary's operator new calls CountHeapAllocation(); wolfSSL's
// allocations go through InstallTlsAllocationCounting(). Threads that never
// call SetThreadAllocationCounters (main, control) are not counted.

#include <atomic>
#include <cstdint>

namespace dotproxy::control {

// REQUIRES: both counters outlive the calling thread's use of them.
void SetThreadAllocationCounters(std::atomic<uint64_t>* heap, std::atomic<uint64_t>* tls);

// Called by the binary's operator new. Cheap: one thread-local load.
void CountHeapAllocation();

// Routes wolfSSL's malloc/realloc through a counter. Call once, before
// wolfSSL_Init.
void InstallTlsAllocationCounting();

}  // namespace dotproxy::control
