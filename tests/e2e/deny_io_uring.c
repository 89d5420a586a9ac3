// deny_io_uring: runs a program with io_uring switched off, the way a
// container's seccomp profile or kernel.io_uring_disabled switches it off.
//
//     deny_io_uring PROGRAM [ARGS...]
//
// Installs a seccomp filter (libseccomp; default: allow) under which
// io_uring_setup, io_uring_enter and io_uring_register fail with EPERM, then
// execvp's PROGRAM. The filter is inherited by every thread and child of
// PROGRAM, and no_new_privs is set (libseccomp's default), so it cannot be
// lifted. The e2e cases use it to drive dotproxy's epoll fallback
// (`--io-backend auto`) and its hard failure (`--io-backend uring`).
//
// Exit status: PROGRAM's, or 2 for a usage error, 126 if the filter cannot be
// installed, 127 if PROGRAM cannot be executed (as a shell would).

#include <errno.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int DenyWithEperm(scmp_filter_ctx ctx, const char* name) {
  int nr = seccomp_syscall_resolve_name(name);
  if (nr == __NR_SCMP_ERROR) {
    fprintf(stderr, "deny_io_uring: libseccomp does not know %s on this architecture\n", name);
    return -1;
  }
  int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
  if (rc < 0) {
    fprintf(stderr, "deny_io_uring: seccomp_rule_add(%s): %s\n", name, strerror(-rc));
    return -1;
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0) {
    fprintf(stderr,
            "usage: deny_io_uring PROGRAM [ARGS...]\n"
            "Runs PROGRAM with io_uring_setup, io_uring_enter and io_uring_register\n"
            "failing with EPERM (seccomp filter, everything else allowed).\n");
    return 2;
  }
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (ctx == NULL) {
    fprintf(stderr, "deny_io_uring: seccomp_init failed\n");
    return 126;
  }
  static const char* const kDenied[] = {"io_uring_setup", "io_uring_enter", "io_uring_register"};
  for (size_t i = 0; i < sizeof(kDenied) / sizeof(kDenied[0]); ++i) {
    if (DenyWithEperm(ctx, kDenied[i]) != 0) {
      seccomp_release(ctx);
      return 126;
    }
  }
  int rc = seccomp_load(ctx);
  seccomp_release(ctx);
  if (rc < 0) {
    fprintf(stderr, "deny_io_uring: seccomp_load: %s\n", strerror(-rc));
    return 126;
  }
  execvp(argv[1], &argv[1]);
  fprintf(stderr, "deny_io_uring: cannot execute %s: %s\n", argv[1], strerror(errno));
  return 127;
}
