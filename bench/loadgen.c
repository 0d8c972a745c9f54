/*
 * loadgen: a small keep-alive HTTP/1.1 load generator for HEAD-carrying workloads.
 *
 *   cc -O2 -o loadgen bench/loadgen.c
 *   loadgen -p PORT [-t THREADS] -c CONNS -d SECS -f REQUESTS
 *
 * Why not wrk: wrk 4.1 (Debian) never completes a HEAD whose response carries a
 * non-zero Content-Length (which every correct registry, and nginx, sends): its
 * parser waits for a body that never comes, so it reports 0 requests. h2load
 * has the same problem, and hey spends most of a core of client CPU per 30k
 * req/s. Each of THREADS workers is one epoll loop, like a wrk thread.
 *
 * REQUESTS holds raw requests back to back, each ending with an empty line
 * ("\r\n\r\n", no bodies). A worker's connections take them round robin from
 * one counter (worker k starts k/THREADS of the way in), so a list of N paths
 * is walked in order across all connections.
 * A response is complete at the end of its headers for HEAD, 204 and 304, else
 * after Content-Length bytes of body; chunked bodies are counted as errors
 * (none of the servers benchmarked sends them for these paths).
 *
 * Prints one JSON line: requests, non2xx (count and the first one seen),
 * errors (connect/read/protocol), seconds, bytes read.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HDR_MAX 16384
#define RBUF 65536

typedef struct { const char *p; size_t len; int head; } req_t;
typedef struct {
    int fd;
    size_t req;       /* index of the request in flight */
    size_t woff;      /* bytes of it written so far */
    char hdr[HDR_MAX];
    size_t hlen;      /* header bytes buffered (0 once in the body) */
    long long body;   /* body bytes still to read; -1 while reading headers */
    int status;       /* of the response being read */
    int close_after;  /* the server said Connection: close */
} conn_t;

static req_t *reqs;
static size_t nreqs, next_req;
static long long done_reqs, non2xx, errors, bytes_read;
static char first_bad[512];
static struct sockaddr_in addr;
static int ep;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *m) { perror(m); exit(2); }

static void load_requests(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc(n + 1);
    if (fread(buf, 1, n, f) != (size_t)n) die("read requests");
    fclose(f);
    buf[n] = 0;
    size_t cap = 1024;
    reqs = malloc(cap * sizeof *reqs);
    for (char *p = buf; p < buf + n;) {
        char *end = strstr(p, "\r\n\r\n");
        if (!end) break;
        if (nreqs == cap) reqs = realloc(reqs, (cap *= 2) * sizeof *reqs);
        reqs[nreqs++] = (req_t){p, (size_t)(end + 4 - p), strncmp(p, "HEAD ", 5) == 0};
        p = end + 4;
    }
    if (!nreqs) { fprintf(stderr, "no requests in %s\n", path); exit(2); }
}

static void open_conn(conn_t *c) {
    /* Blocking connect over loopback is immediate; then non-blocking for the loop. */
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) die("socket");
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
}

static void set_out(conn_t *c, int want_out) {
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Write what is left of the request in flight; wait for EPOLLOUT if the socket is full. */
static int flush_req(conn_t *c) {
    req_t *r = &reqs[c->req];
    while (c->woff < r->len) {
        ssize_t w = write(c->fd, r->p + c->woff, r->len - c->woff);
        if (w < 0 && errno == EAGAIN) { set_out(c, 1); return 0; }
        if (w <= 0) return -1;
        c->woff += w;
    }
    return 0;
}

static int send_next(conn_t *c) {
    c->req = next_req++ % nreqs;
    c->woff = 0;
    c->hlen = 0;
    c->body = -1;
    return flush_req(c);
}

static void reconnect(conn_t *c, int is_error) {
    errors += is_error;
    close(c->fd);
    open_conn(c);
    if (send_next(c) < 0) die("write after reconnect");
}

static void response_done(conn_t *c) {
    int status = c->status;
    done_reqs++;
    if (status < 200 || status > 299) {
        if (!non2xx++) {
            const char *p = reqs[c->req].p;
            size_t l = strcspn(p, "\r");
            snprintf(first_bad, sizeof first_bad, "%d %.*s", status, (int)(l > 400 ? 400 : l), p);
        }
    }
}

/* Parse the buffered headers: status, body length. Returns -1 on a protocol error. */
static int parse_headers(conn_t *c) {
    if (c->hlen < 12 || strncmp(c->hdr, "HTTP/1.", 7) != 0) return -1;
    c->status = atoi(c->hdr + 9);
    c->body = 0;
    c->close_after = 0;
    c->hdr[c->hlen] = 0;
    for (char *l = strstr(c->hdr, "\r\n"); l; l = strstr(l + 2, "\r\n")) {
        if (!strncasecmp(l + 2, "content-length:", 15)) c->body = atoll(l + 17);
        else if (!strncasecmp(l + 2, "transfer-encoding:", 18)) return -1;
        else if (!strncasecmp(l + 2, "connection:", 11))
            c->close_after = !strncasecmp(l + 13 + strspn(l + 13, " "), "close", 5);
    }
    if (reqs[c->req].head || c->status == 204 || c->status == 304 || c->status < 200) c->body = 0;
    return 0;
}

/* Feed N bytes of the current response to the parser; 1 when it is complete. */
static int consume(conn_t *c, const char *p, ssize_t n) {
    if (c->body < 0) { /* still in the headers */
        size_t take = (size_t)n < HDR_MAX - 1 - c->hlen ? (size_t)n : HDR_MAX - 1 - c->hlen;
        size_t start = c->hlen > 3 ? c->hlen - 3 : 0; /* "\r\n\r\n" may straddle reads */
        memcpy(c->hdr + c->hlen, p, take);
        c->hlen += take;
        c->hdr[c->hlen] = 0;
        char *end = strstr(c->hdr + start, "\r\n\r\n");
        if (!end) return c->hlen >= HDR_MAX - 1 ? -1 : 0;
        size_t used = (end + 4 - c->hdr) - (c->hlen - take);
        c->hlen = end + 4 - c->hdr;
        if (parse_headers(c) < 0) return -1;
        p += used;
        n -= used;
    }
    if (n > c->body) return -1; /* bytes nobody asked for: we never pipeline */
    c->body -= n;
    return c->body == 0;
}

/* One read per event: epoll is level-triggered, so what is left wakes us again. */
static void on_readable(conn_t *c) {
    static char buf[RBUF];
    ssize_t n = read(c->fd, buf, sizeof buf);
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) { reconnect(c, 1); return; }
    bytes_read += n;
    int r = consume(c, buf, n);
    if (r < 0) { reconnect(c, 1); return; }
    if (r == 0) return;
    response_done(c);
    if (c->close_after) reconnect(c, 0);
    else if (send_next(c) < 0) reconnect(c, 1);
}

typedef struct { long long requests, non2xx, errors, bytes; double seconds; char first_bad[512]; } result_t;

/* One worker: CONNS connections in one epoll loop for SECS, starting at request OFFSET. */
static result_t run(int conns, double secs, size_t offset) {
    next_req = offset;
    ep = epoll_create1(0);
    conn_t *cs = calloc(conns, sizeof *cs);
    double start = now(), stop = start + secs;
    for (int i = 0; i < conns; i++) {
        open_conn(&cs[i]);
        if (send_next(&cs[i]) < 0) die("write");
    }
    struct epoll_event evs[256];
    while (now() < stop) {
        int n = epoll_wait(ep, evs, 256, 10);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (evs[i].events & EPOLLOUT) {
                set_out(c, 0);
                if (flush_req(c) < 0) { reconnect(c, 1); continue; }
            }
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
        }
    }
    result_t r = {done_reqs, non2xx, errors, bytes_read, now() - start, ""};
    memcpy(r.first_bad, first_bad, sizeof first_bad);
    return r;
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen -p PORT [-h HOST] [-t THREADS] -c CONNS -d SECS -f REQUESTS\n");
    exit(2);
}

int main(int argc, char **argv) {
    int conns = 32, port = 0, threads = 1;
    double secs = 10;
    const char *file = NULL, *host = "127.0.0.1";
    for (int o; (o = getopt(argc, argv, "c:d:f:p:h:t:")) != -1;) {
        if (o == 'c') conns = atoi(optarg);
        else if (o == 'd') secs = atof(optarg);
        else if (o == 'f') file = optarg;
        else if (o == 'p') port = atoi(optarg);
        else if (o == 'h') host = optarg;
        else if (o == 't') threads = atoi(optarg);
        else usage();
    }
    if (!file || !port || threads < 1 || conns < threads) usage();
    load_requests(file);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    inet_pton(AF_INET, host, &addr.sin_addr);
    /* "Threads" are forked processes (nothing is shared, like wrk's threads), each
       with its share of the connections, reporting back through a pipe. */
    int fds[2];
    if (pipe(fds) < 0) die("pipe");
    for (int t = 0; t < threads; t++) {
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            close(fds[0]);
            int mine = conns / threads + (t < conns % threads);
            result_t r = run(mine, secs, nreqs * t / threads);
            if (write(fds[1], &r, sizeof r) != sizeof r) die("write result");
            _exit(0);
        }
    }
    close(fds[1]);
    result_t sum = {0};
    double rps = 0;
    for (int t = 0; t < threads; t++) {
        result_t r;
        if (read(fds[0], &r, sizeof r) != sizeof r) { fprintf(stderr, "a worker died\n"); return 2; }
        sum.requests += r.requests;
        sum.non2xx += r.non2xx;
        sum.errors += r.errors;
        sum.bytes += r.bytes;
        sum.seconds = r.seconds > sum.seconds ? r.seconds : sum.seconds;
        rps += r.requests / r.seconds;
        if (!sum.first_bad[0]) memcpy(sum.first_bad, r.first_bad, sizeof r.first_bad);
    }
    printf("{\"requests\": %lld, \"rps\": %.1f, \"non2xx\": %lld, \"first_non2xx\": \"", sum.requests, rps, sum.non2xx);
    for (char *q = sum.first_bad; *q; q++) putchar(*q == '"' || *q == '\\' ? '\'' : *q);
    printf("\", \"errors\": %lld, \"seconds\": %.3f, \"bytes\": %lld}\n", sum.errors, sum.seconds, sum.bytes);
    return 0;
}
