/* A slow CPU in fine slices: takes BUSY_US of every BUSY_US + IDLE_US on the
 * CPU it runs on (spinning), for SECONDS or until SIGTERM.
 *
 * Run at real-time priority on the target's CPU (chrt -f, taskset), it
 * leaves the target about IDLE_US / (BUSY_US + IDLE_US) of that CPU, in
 * slices of IDLE_US: the same share as a CFS quota, without a quota's
 * throttling, whose period cannot go below 1 ms for the quota either (10%
 * means 1 ms in every 10), so that whatever arrives while the target is
 * throttled waits up to 9 ms. bench/load/overload_cpu.py --thief uses it to
 * tell that wait (the rig's) from the target's own queueing. The kernel's
 * real-time throttling (sched_rt_runtime_us, 95% by default) bounds what it
 * can take. Prints the share it took (busy time over wall time) when done.
 *
 * usage: cpu_thief BUSY_US IDLE_US SECONDS
 * Built by bench/load/overload_cpu.py with: cc -O2 -o cpu_thief cpu_thief.c
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s BUSY_US IDLE_US SECONDS\n", argv[0]);
        return 2;
    }
    const long long busy_ns = atoll(argv[1]) * 1000LL;
    const long long idle_ns = atoll(argv[2]) * 1000LL;
    const long long seconds = atoll(argv[3]);
    if (busy_ns <= 0 || idle_ns <= 0 || busy_ns > 1000000000LL || idle_ns > 1000000000LL ||
        seconds <= 0 || seconds > 3600) {
        fprintf(stderr, "bad BUSY_US, IDLE_US or SECONDS\n");
        return 2;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    const long long start = now_ns();
    const long long end = start + seconds * 1000000000LL;
    long long busy_total = 0;
    while (!stop) {
        const long long spin_start = now_ns();
        if (spin_start >= end) break;
        while (now_ns() - spin_start < busy_ns) {
        }
        busy_total += now_ns() - spin_start;
        const struct timespec idle = {0, idle_ns};
        clock_nanosleep(CLOCK_MONOTONIC, 0, &idle, NULL);
    }
    const long long wall = now_ns() - start;
    printf("share=%.3f wall_s=%.1f\n", wall > 0 ? (double)busy_total / (double)wall : 0.0,
           (double)wall / 1e9);
    return 0;
}
