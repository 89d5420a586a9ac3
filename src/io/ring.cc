#include "src/io/ring.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace dotproxy::io {

Ring::~Ring() {
  if (initialized_) io_uring_queue_exit(&ring_);
}

absl::Status Ring::Init(unsigned entries, unsigned cq_entries) {
  io_uring_params params{};
  params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER |
                 IORING_SETUP_DEFER_TASKRUN;
  params.cq_entries = cq_entries;
  int rc = io_uring_queue_init_params(entries, &ring_, &params);
  if (rc == -EINVAL) {
    params = {};
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = cq_entries;
    rc = io_uring_queue_init_params(entries, &ring_, &params);
  }
  if (rc < 0) {
    return absl::UnavailableError(absl::StrCat("io_uring_queue_init: ", std::strerror(-rc)));
  }
  initialized_ = true;
  return absl::OkStatus();
}

io_uring_sqe* Ring::GetSqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

BufferRing::~BufferRing() {
  if (ring_ != nullptr) {
    io_uring_unregister_buf_ring(owner_->get(), group_id_);
    munmap(ring_, ring_bytes_);
  }
  std::free(buffers_);
}

absl::Status BufferRing::Init(Ring& ring, uint16_t group_id, unsigned count,
                              unsigned buffer_size) {
  owner_ = &ring;
  group_id_ = group_id;
  count_ = count;
  buffer_size_ = buffer_size;
  mask_ = io_uring_buf_ring_mask(count);
  ring_bytes_ = sizeof(io_uring_buf) * count;
  void* memory = mmap(nullptr, ring_bytes_, PROT_READ | PROT_WRITE,
                      MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (memory == MAP_FAILED) return absl::ResourceExhaustedError("mmap buffer ring");
  ring_ = static_cast<io_uring_buf_ring*>(memory);
  io_uring_buf_ring_init(ring_);

  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(ring_);
  reg.ring_entries = count;
  reg.bgid = group_id;
  const int rc = io_uring_register_buf_ring(ring.get(), &reg, 0);
  if (rc < 0) {
    munmap(ring_, ring_bytes_);
    ring_ = nullptr;
    return absl::UnavailableError(
        absl::StrCat("io_uring_register_buf_ring: ", std::strerror(-rc)));
  }
  buffers_ = static_cast<uint8_t*>(std::aligned_alloc(64, size_t{count} * buffer_size));
  if (buffers_ == nullptr) return absl::ResourceExhaustedError("buffer ring memory");
  for (unsigned id = 0; id < count; ++id) Recycle(static_cast<uint16_t>(id));
  Publish();
  return absl::OkStatus();
}

}  // namespace dotproxy::io
