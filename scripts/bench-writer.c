/*
 * Append writer for scripts/bench: forks WRITERS processes, each appending fixed-size records
 * with write(2) to its own file DIR/writer-N.log, opened O_WRONLY|O_APPEND|O_CREAT.
 *
 * Usage: bench-writer DIR RECORD_BYTES TOTAL_BYTES WRITERS [MAX_SECONDS [FSYNC_EVERY]]
 *
 * Each writer appends floor(TOTAL_BYTES / WRITERS / RECORD_BYTES) records, or fewer if
 * MAX_SECONDS (default 0, no limit) passed since the start: then it stops after the write in
 * progress. Every write(2) call is timed with CLOCK_MONOTONIC. The writers open their files
 * first and then wait on a pipe, so opening is not timed and all of them start together. The
 * elapsed time runs from that start to the end of the last write; close(2) is not timed. With
 * FSYNC_EVERY N above 0, each writer calls fsync(2) after every Nth record, and the time of that
 * record includes the fsync.
 *
 * Prints two lines:
 *   bytes=B writes=W seconds=S p50_us=X p99_us=Y max_us=Z capped=0|1
 *   sizes=N0,N1,...   (bytes appended to writer-0.log, writer-1.log, ...)
 * Exits 1 on a failed or short write, and when a file's final size differs from what its writer
 * appended. The message names the file and the error. Exits 2 on invalid arguments.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_WRITERS 64

/* Shared between the parent and the writer processes (MAP_SHARED). */
struct shared_header {
    uint64_t end_ns[MAX_WRITERS];
    uint64_t writes[MAX_WRITERS];
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int parse_u64(const char *text, const char *name, uint64_t minimum, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || value < minimum) {
        fprintf(stderr, "bench-writer: invalid %s %s: expected an integer of at least %" PRIu64 "\n", name,
                text, minimum);
        return -1;
    }
    *out = value;
    return 0;
}

/*
 * Runs one writer process: opens PATH, waits for the start signal, appends up to COUNT records
 * and stops early once MAX_NS (0: no limit) passed. Stores the number of writes in *WRITES.
 */
static int run_writer(const char *path, int start_fd, const char *record, size_t record_bytes,
                      uint64_t count, uint64_t max_ns, uint64_t fsync_every, uint64_t *latencies,
                      uint64_t *end_ns, uint64_t *writes)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "bench-writer: open %s failed: %s\n", path, strerror(errno));
        return 1;
    }

    char byte;
    ssize_t got = read(start_fd, &byte, 1);
    if (got != 0) {
        fprintf(stderr, "bench-writer: start pipe of %s returned %zd, expected end of file\n", path, got);
        return 1;
    }

    uint64_t start_ns = now_ns();
    uint64_t done = 0;
    while (done < count) {
        uint64_t before = now_ns();
        ssize_t written = write(fd, record, record_bytes);
        if (written >= 0 && fsync_every != 0 && (done + 1) % fsync_every == 0 && fsync(fd) != 0) {
            fprintf(stderr, "bench-writer: fsync after write %" PRIu64 " to %s failed: %s\n", done, path,
                    strerror(errno));
            return 1;
        }
        uint64_t after = now_ns();
        if (written < 0) {
            fprintf(stderr, "bench-writer: write %" PRIu64 " to %s failed: %s\n", done, path, strerror(errno));
            return 1;
        }
        if ((size_t)written != record_bytes) {
            fprintf(stderr, "bench-writer: write %" PRIu64 " to %s was short: %zd of %zu bytes\n", done, path,
                    written, record_bytes);
            return 1;
        }
        latencies[done] = after - before;
        done++;
        if (max_ns != 0 && after - start_ns >= max_ns)
            break;
    }
    *end_ns = now_ns();
    *writes = done;

    if (close(fd) != 0) {
        fprintf(stderr, "bench-writer: close %s failed: %s\n", path, strerror(errno));
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 5 || argc > 7) {
        fprintf(stderr, "usage: bench-writer DIR RECORD_BYTES TOTAL_BYTES WRITERS [MAX_SECONDS [FSYNC_EVERY]]\n");
        return 2;
    }
    const char *dir = argv[1];
    uint64_t record_bytes, total_bytes, writers, max_seconds = 0, fsync_every = 0;
    if (parse_u64(argv[2], "RECORD_BYTES", 1, &record_bytes) || parse_u64(argv[3], "TOTAL_BYTES", 1, &total_bytes) ||
        parse_u64(argv[4], "WRITERS", 1, &writers) || (argc >= 6 && parse_u64(argv[5], "MAX_SECONDS", 0, &max_seconds)) ||
        (argc == 7 && parse_u64(argv[6], "FSYNC_EVERY", 0, &fsync_every)))
        return 2;
    if (writers > MAX_WRITERS) {
        fprintf(stderr, "bench-writer: invalid WRITERS %" PRIu64 ": maximum is %d\n", writers, MAX_WRITERS);
        return 2;
    }
    uint64_t per_writer = total_bytes / writers / record_bytes;
    if (per_writer == 0) {
        fprintf(stderr, "bench-writer: TOTAL_BYTES %" PRIu64 " is too small for %" PRIu64 " writers of %" PRIu64
                        "-byte records\n", total_bytes, writers, record_bytes);
        return 2;
    }
    uint64_t planned_writes = per_writer * writers;

    /* One record: printable bytes ending in a newline, like a log line. */
    char *record = malloc(record_bytes);
    if (record == NULL) {
        fprintf(stderr, "bench-writer: cannot allocate a %" PRIu64 "-byte record\n", record_bytes);
        return 1;
    }
    for (uint64_t i = 0; i < record_bytes; i++)
        record[i] = (char)('a' + i % 26);
    record[record_bytes - 1] = '\n';

    size_t shared_bytes = sizeof(struct shared_header) + planned_writes * sizeof(uint64_t);
    void *shared = mmap(NULL, shared_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) {
        fprintf(stderr, "bench-writer: mmap of %zu bytes failed: %s\n", shared_bytes, strerror(errno));
        return 1;
    }
    struct shared_header *header = shared;
    uint64_t *latencies = (uint64_t *)((char *)shared + sizeof(struct shared_header));

    int start_pipe[2];
    if (pipe(start_pipe) != 0) {
        fprintf(stderr, "bench-writer: pipe failed: %s\n", strerror(errno));
        return 1;
    }

    char paths[MAX_WRITERS][4096];
    pid_t pids[MAX_WRITERS];
    for (uint64_t w = 0; w < writers; w++) {
        snprintf(paths[w], sizeof paths[w], "%s/writer-%" PRIu64 ".log", dir, w);
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "bench-writer: fork failed: %s\n", strerror(errno));
            for (uint64_t k = 0; k < w; k++)
                kill(pids[k], SIGKILL);
            return 1;
        }
        if (pid == 0) {
            close(start_pipe[1]);
            int rc = run_writer(paths[w], start_pipe[0], record, record_bytes, per_writer,
                                max_seconds * 1000000000u, fsync_every, latencies + w * per_writer,
                                &header->end_ns[w], &header->writes[w]);
            _exit(rc);
        }
        pids[w] = pid;
    }

    /* Closing the write end is the start signal, because every writer's read(2) then returns 0. */
    close(start_pipe[0]);
    uint64_t start_ns = now_ns();
    close(start_pipe[1]);

    int failed = 0;
    for (uint64_t w = 0; w < writers; w++) {
        int status;
        if (waitpid(pids[w], &status, 0) < 0) {
            fprintf(stderr, "bench-writer: waitpid for writer %" PRIu64 " failed: %s\n", w, strerror(errno));
            failed = 1;
        } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "bench-writer: writer %" PRIu64 " (%s) failed with status 0x%x\n", w, paths[w], status);
            failed = 1;
        }
    }
    if (failed)
        return 1;

    uint64_t last_end_ns = start_ns;
    for (uint64_t w = 0; w < writers; w++) {
        if (header->end_ns[w] > last_end_ns)
            last_end_ns = header->end_ns[w];
    }

    /* Every file must now contain exactly what its writer appended (files start absent or empty). */
    for (uint64_t w = 0; w < writers; w++) {
        uint64_t expected_size = header->writes[w] * record_bytes;
        struct stat st;
        if (stat(paths[w], &st) != 0) {
            fprintf(stderr, "bench-writer: stat %s failed: %s\n", paths[w], strerror(errno));
            return 1;
        }
        if ((uint64_t)st.st_size != expected_size) {
            fprintf(stderr, "bench-writer: %s has %lld bytes, expected %" PRIu64 "\n", paths[w],
                    (long long)st.st_size, expected_size);
            return 1;
        }
    }

    /* Move the latencies of writers that stopped early next to each other, then sort them all. */
    uint64_t total_writes = 0;
    int capped = 0;
    for (uint64_t w = 0; w < writers; w++) {
        memmove(latencies + total_writes, latencies + w * per_writer, header->writes[w] * sizeof(uint64_t));
        total_writes += header->writes[w];
        capped |= header->writes[w] < per_writer;
    }
    qsort(latencies, total_writes, sizeof(uint64_t), compare_u64);
    /* Nearest-rank percentiles. */
    uint64_t p50 = latencies[(total_writes * 50 + 99) / 100 - 1];
    uint64_t p99 = latencies[(total_writes * 99 + 99) / 100 - 1];
    uint64_t max = latencies[total_writes - 1];
    double seconds = (double)(last_end_ns - start_ns) / 1e9;

    printf("bytes=%" PRIu64 " writes=%" PRIu64 " seconds=%.6f p50_us=%.2f p99_us=%.2f max_us=%.2f capped=%d\n",
           total_writes * record_bytes, total_writes, seconds, (double)p50 / 1e3, (double)p99 / 1e3,
           (double)max / 1e3, capped);
    printf("sizes=");
    for (uint64_t w = 0; w < writers; w++)
        printf("%s%" PRIu64, w == 0 ? "" : ",", header->writes[w] * record_bytes);
    printf("\n");
    return 0;
}
