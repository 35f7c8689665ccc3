/*
 * loadgen: the benchmark's load generator and backends, in C with the system OpenSSL, so that
 * the generator is never the bottleneck of a Node proxy's figures. Compiled at run time by
 * bench/generators.ts (gcc -O2 -pthread loadgen.c -lssl -lcrypto). Blocking sockets, one thread
 * per connection (servers keep a pool of 32 acceptor threads, so that short handshake-only
 * connections cost no thread creation): simple, and on one pinned core cheap enough (see
 * docs/performance.md, "Generator headroom").
 *
 * Servers (backends, and the no-proxy baseline endpoint):
 *   loadgen serve PORT [--cert F --key F [--ca F]] [--smtp [--starttls]]
 *     Without --smtp, each connection starts with a header line that picks what it does:
 *       "SINK n\n"  read n bytes, then answer "K"          (upload)
 *       "SRC n\n"   send n bytes                           (download)
 *       "ECHO\n"    echo everything back                   (request/response, idle connections)
 *       "HS\n"      answer "OK\n"                          (one small message per handshake)
 *     then read until the peer closes. --cert/--key: TLS 1.3 first; --ca: require a client
 *     certificate that verifies against F. --smtp: a minimal SMTP server (220 greeting, EHLO,
 *     QUIT → 221); --starttls: it also offers and performs STARTTLS itself (baseline).
 *
 * Clients (each prints one JSON line on stdout):
 *   loadgen tput PORT up|down BYTES CONNS [client options]   total BYTES spread over CONNS
 *   loadgen hs   PORT SECONDS CONNS [client options]          full handshakes, no resumption
 *   loadgen rr   PORT SECONDS CONNS SIZE [client options]     closed-loop echo latency
 *   loadgen hold PORT STEPS [client options]                  STEPS = "5000,10000": opens that
 *       many idle connections (64 threads opening them), prints {"held":n} at each step and
 *       waits for a line on stdin before going on; exits when stdin closes.
 *   client options: --ca F (TLS 1.3, verify the server against F, name "localhost"),
 *                   --cert F --key F (client certificate), --smtp (SMTP STARTTLS first).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  int fd;
  SSL *ssl;
} conn_t;

static SSL_CTX *ctx;  /* server or client context; NULL = plaintext */
static int smtp, starttls;
static int port;
static char payload[1 << 16];

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

/* CPU seconds this process has used (user + system), for the generator-headroom figures. */
static double cpu_s(void) {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

static void die(const char *what) {
  fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
  ERR_print_errors_fp(stderr);
  exit(2);
}

static int cread(conn_t *c, void *b, int n) {
  if (c->ssl) {
    int r = SSL_read(c->ssl, b, n);
    return r > 0 ? r : 0;
  }
  ssize_t r;
  do r = read(c->fd, b, n);
  while (r < 0 && errno == EINTR);
  return r > 0 ? (int)r : 0;
}

static int cwrite(conn_t *c, const void *b, int n) {
  const char *p = b;
  while (n > 0) {
    int w;
    if (c->ssl) {
      w = SSL_write(c->ssl, p, n);
      if (w <= 0) return -1;
    } else {
      ssize_t r = write(c->fd, p, n);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return -1;
      w = (int)r;
    }
    p += w;
    n -= w;
  }
  return 0;
}

static int cputs(conn_t *c, const char *s) { return cwrite(c, s, (int)strlen(s)); }

static int cread_exact(conn_t *c, char *b, int n) {
  while (n > 0) {
    int r = cread(c, b, n);
    if (r <= 0) return -1;
    b += r;
    n -= r;
  }
  return 0;
}

/* Reads one line (up to '\n') byte by byte, so that nothing after it is consumed. */
static int cread_line(conn_t *c, char *b, int max) {
  int n = 0;
  while (n < max - 1) {
    if (cread(c, b + n, 1) <= 0) return -1;
    if (b[n++] == '\n') break;
  }
  b[n] = 0;
  return n;
}

static void drain_until_eof(conn_t *c) {
  char b[1 << 14];
  while (cread(c, b, sizeof b) > 0) {
  }
}

static void cclose(conn_t *c) {
  if (c->ssl) {
    SSL_shutdown(c->ssl); /* send close_notify, do not wait for the peer's */
    SSL_free(c->ssl);
    c->ssl = NULL;
  }
  close(c->fd);
}

static void nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* ------------------------------------------------------------------------------------------ */
/* Server                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static int tls_accept(conn_t *c) {
  c->ssl = SSL_new(ctx);
  SSL_set_fd(c->ssl, c->fd);
  return SSL_accept(c->ssl) == 1 ? 0 : -1;
}

static void multi_session_run(conn_t *c, const char *line, char *buf);
static int listener;
static pthread_attr_t thread_attr;
static void *acceptor(void *);

/*
 * Threads: a pool of acceptors, each serving one connection at a time, so that handshake-only
 * connections cost no thread creation. An acceptor that starts a long session (SINK, SRC, ECHO)
 * first starts a replacement acceptor and ends when its session does.
 */
static int hand_over(void) {
  pthread_t t;
  return pthread_create(&t, &thread_attr, acceptor, NULL) == 0;
}

/* Returns 1 when this thread handed its acceptor role over and must end after the session. */
static int multi_session(conn_t *c) {
  char line[128];
  static char buf[1 << 16]; /* contents never read: shared scratch is fine */
  if (cread_line(c, line, sizeof line) <= 0) return 0;
  int long_session = strncmp(line, "SINK ", 5) == 0 || strncmp(line, "SRC ", 4) == 0 || strcmp(line, "ECHO\n") == 0;
  if (long_session && !hand_over()) return 0;
  multi_session_run(c, line, buf);
  return long_session;
}

static void multi_session_run(conn_t *c, const char *line, char *buf) {
  if (strncmp(line, "SINK ", 5) == 0) {
    long long left = atoll(line + 5);
    while (left > 0) {
      int r = cread(c, buf, left < (1 << 16) ? (int)left : (1 << 16));
      if (r <= 0) return;
      left -= r;
    }
    if (cputs(c, "K") < 0) return;
  } else if (strncmp(line, "SRC ", 4) == 0) {
    long long left = atoll(line + 4);
    while (left > 0) {
      int n = left < (long long)sizeof payload ? (int)left : (int)sizeof payload;
      if (cwrite(c, payload, n) < 0) return;
      left -= n;
    }
  } else if (strcmp(line, "ECHO\n") == 0) {
    char b[1 << 14];
    int r;
    while ((r = cread(c, b, sizeof b)) > 0)
      if (cwrite(c, b, r) < 0) return;
    return;
  } else if (strcmp(line, "HS\n") == 0) {
    if (cputs(c, "OK\n") < 0) return;
  } else {
    return;
  }
  drain_until_eof(c);
}

static void smtp_session(conn_t *c) {
  char line[1024];
  int tls = 0;
  if (cputs(c, "220 bench ESMTP\r\n") < 0) return;
  while (cread_line(c, line, sizeof line) > 0) {
    if (strncasecmp(line, "EHLO", 4) == 0 || strncasecmp(line, "HELO", 4) == 0) {
      if (cputs(c, starttls && !tls ? "250-bench\r\n250-STARTTLS\r\n250 8BITMIME\r\n" : "250-bench\r\n250 8BITMIME\r\n") < 0)
        return;
    } else if (starttls && !tls && strncasecmp(line, "STARTTLS", 8) == 0) {
      if (cputs(c, "220 2.0.0 Ready to start TLS\r\n") < 0 || tls_accept(c) < 0) return;
      tls = 1;
    } else if (strncasecmp(line, "QUIT", 4) == 0) {
      cputs(c, "221 2.0.0 Bye\r\n");
      return;
    } else if (cputs(c, "250 2.0.0 OK\r\n") < 0) {
      return;
    }
  }
}

static void *acceptor(void *arg) {
  (void)arg;
  for (;;) {
    conn_t c = {accept(listener, NULL, NULL), NULL};
    if (c.fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE) {
        usleep(1000);
        continue;
      }
      die("accept");
    }
    nodelay(c.fd);
    int handed_over = 0;
    if (smtp)
      smtp_session(&c);
    else if (!ctx || tls_accept(&c) == 0)
      handed_over = multi_session(&c);
    cclose(&c);
    if (handed_over) return NULL;
  }
}

static int serve(void) {
  int one = 1;
  listener = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(listener, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
  if (listen(listener, 4096) < 0) die("listen");
  pthread_attr_init(&thread_attr);
  pthread_attr_setstacksize(&thread_attr, 256 * 1024);
  pthread_attr_setdetachstate(&thread_attr, PTHREAD_CREATE_DETACHED);
  for (int i = 0; i < 32; i++) hand_over();
  pause();
  return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Clients                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static char cipher[64] = "plaintext";

static int smtp_reply(conn_t *c, const char *code) {
  char line[1024];
  do {
    if (cread_line(c, line, sizeof line) < 4 || strncmp(line, code, 3) != 0) return -1;
  } while (line[3] == '-');
  return 0;
}

static int io_timeout; /* hold: seconds a connect/handshake may block (a proxy out of descriptors never answers) */

static int open_conn(conn_t *c) {
  c->ssl = NULL;
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  if (c->fd < 0) return -1;
  nodelay(c->fd);
  if (io_timeout) {
    struct timeval tv = {.tv_sec = io_timeout};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0) goto fail;
  if (smtp && (smtp_reply(c, "220") < 0 || cputs(c, "EHLO bench.example\r\n") < 0 || smtp_reply(c, "250") < 0 ||
               cputs(c, "STARTTLS\r\n") < 0 || smtp_reply(c, "220") < 0))
    goto fail;
  if (ctx) {
    c->ssl = SSL_new(ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_tlsext_host_name(c->ssl, "localhost");
    SSL_set1_host(c->ssl, "localhost");
    if (SSL_connect(c->ssl) != 1) goto fail;
    if (cipher[0] == 'p') snprintf(cipher, sizeof cipher, "%s %s", SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl));
  }
  return 0;
fail:
  if (c->ssl) SSL_free(c->ssl);
  c->ssl = NULL;
  close(c->fd);
  return -1;
}

/* One thread's share of a run. */
typedef struct {
  pthread_t t;
  long long bytes;
  double start, end;
  long count, errors;
  float *lat; /* rr: latencies in microseconds */
  long nlat, cap;
  int from, to; /* hold: slice of the connection array */
} job_t;

static const char *dir;
static double duration; /* hs, rr: seconds, counted by each thread from the barrier */
static int rr_size;
static pthread_barrier_t barrier;
static conn_t *held;

static void *tput_job(void *arg) {
  job_t *j = arg;
  conn_t c;
  char line[64], buf[1 << 16];
  int ok = open_conn(&c) == 0;
  pthread_barrier_wait(&barrier);
  if (!ok) {
    j->errors++;
    return NULL;
  }
  j->start = now();
  snprintf(line, sizeof line, "%s %lld\n", dir[0] == 'u' ? "SINK" : "SRC", j->bytes);
  if (cputs(&c, line) < 0) goto fail;
  if (dir[0] == 'u') {
    for (long long left = j->bytes; left > 0; left -= sizeof payload)
      if (cwrite(&c, payload, left < (long long)sizeof payload ? (int)left : (int)sizeof payload) < 0) goto fail;
    if (cread_exact(&c, buf, 1) < 0 || buf[0] != 'K') goto fail;
  } else {
    for (long long left = j->bytes; left > 0;) {
      int r = cread(&c, buf, left < (long long)sizeof buf ? (int)left : (int)sizeof buf);
      if (r <= 0) goto fail;
      left -= r;
    }
  }
  j->end = now();
  j->count = 1;
  cclose(&c);
  return NULL;
fail:
  j->errors++;
  cclose(&c);
  return NULL;
}

static void *hs_job(void *arg) {
  job_t *j = arg;
  char b[4];
  pthread_barrier_wait(&barrier);
  j->start = now();
  double deadline = j->start + duration;
  while (now() < deadline) {
    conn_t c;
    if (open_conn(&c) < 0) {
      j->errors++;
      usleep(1000);
      continue;
    }
    if (smtp ? cputs(&c, "QUIT\r\n") < 0 || smtp_reply(&c, "221") < 0
             : cputs(&c, "HS\n") < 0 || cread_exact(&c, b, 3) < 0 || memcmp(b, "OK\n", 3) != 0)
      j->errors++;
    else
      j->count++;
    cclose(&c);
  }
  j->end = now();
  return NULL;
}

static void *rr_job(void *arg) {
  job_t *j = arg;
  conn_t c;
  char *buf = malloc(rr_size);
  int ok = open_conn(&c) == 0 && cputs(&c, "ECHO\n") == 0;
  pthread_barrier_wait(&barrier);
  j->start = now();
  double deadline = j->start + duration;
  if (!ok) {
    j->errors++;
    return NULL;
  }
  while (now() < deadline) {
    double t0 = now();
    if (cwrite(&c, payload, rr_size) < 0 || cread_exact(&c, buf, rr_size) < 0) {
      j->errors++;
      break;
    }
    if (j->nlat == j->cap) {
      j->cap = j->cap ? j->cap * 2 : 4096;
      j->lat = realloc(j->lat, j->cap * sizeof *j->lat);
    }
    j->lat[j->nlat++] = (float)((now() - t0) * 1e6);
  }
  j->end = now();
  cclose(&c);
  free(buf);
  return NULL;
}

static void *hold_job(void *arg) {
  job_t *j = arg;
  char b[2];
  for (int i = j->from; i < j->to; i++) {
    for (int attempt = 0;; attempt++) {
      conn_t *c = &held[i];
      double t0 = now();
      if (open_conn(c) == 0) {
        if (cputs(c, "ECHO\nx") == 0 && cread_exact(c, b, 1) == 0) break;
        cclose(c);
      }
      j->errors++;
      /* A refusal is retried; a timeout (the proxy accepted nothing) is not: it would only repeat. */
      if (attempt == 5 || now() - t0 >= io_timeout - 0.5) {
        held[i].fd = -1;
        break;
      }
      usleep(10000);
    }
  }
  return NULL;
}

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

static job_t *run_jobs(int n, void *(*fn)(void *), long long bytes_each) {
  job_t *jobs = calloc(n, sizeof *jobs);
  pthread_barrier_init(&barrier, NULL, n);
  for (int i = 0; i < n; i++) {
    jobs[i].bytes = bytes_each;
    pthread_create(&jobs[i].t, NULL, fn, &jobs[i]);
  }
  for (int i = 0; i < n; i++) pthread_join(jobs[i].t, NULL);
  return jobs;
}

static void span(job_t *jobs, int n, double *start, double *end, long *count, long *errors) {
  *start = 1e30, *end = 0, *count = 0, *errors = 0;
  for (int i = 0; i < n; i++) {
    if (jobs[i].start > 0 && jobs[i].start < *start) *start = jobs[i].start;
    if (jobs[i].end > *end) *end = jobs[i].end;
    *count += jobs[i].count;
    *errors += jobs[i].errors;
  }
}

static SSL_CTX *make_ctx(int server, const char *cert, const char *key, const char *ca) {
  SSL_CTX *x = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  SSL_CTX_set_min_proto_version(x, TLS1_3_VERSION);
  SSL_CTX_set_session_cache_mode(x, SSL_SESS_CACHE_OFF); /* every handshake is a full one */
  SSL_CTX_set_options(x, SSL_OP_NO_TICKET);
  if (cert && (SSL_CTX_use_certificate_chain_file(x, cert) != 1 || SSL_CTX_use_PrivateKey_file(x, key, SSL_FILETYPE_PEM) != 1))
    die("certificate/key");
  if (ca) {
    if (SSL_CTX_load_verify_locations(x, ca, NULL) != 1) die("CA file");
    SSL_CTX_set_verify(x, server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER, NULL);
  }
  return x;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc < 3) {
    fprintf(stderr, "usage: see the header of bench/loadgen.c\n");
    return 2;
  }
  const char *mode = argv[1], *cert = NULL, *key = NULL, *ca = NULL;
  port = atoi(argv[2]);
  const char *pos[4] = {0};
  int npos = 0;
  for (int i = 3; i < argc; i++) {
    if (!strcmp(argv[i], "--cert") && i + 1 < argc) cert = argv[++i];
    else if (!strcmp(argv[i], "--key") && i + 1 < argc) key = argv[++i];
    else if (!strcmp(argv[i], "--ca") && i + 1 < argc) ca = argv[++i];
    else if (!strcmp(argv[i], "--smtp")) smtp = 1;
    else if (!strcmp(argv[i], "--starttls")) starttls = 1;
    else if (npos < 4) pos[npos++] = argv[i];
  }
  for (size_t i = 0; i < sizeof payload; i++) payload[i] = (char)(i * 2654435761u >> 24);

  if (!strcmp(mode, "serve")) {
    if (cert) ctx = make_ctx(1, cert, key, ca);
    return serve();
  }
  if (ca || cert) ctx = make_ctx(0, cert, key, ca);
  double start, end;
  long count, errors;
  if (!strcmp(mode, "tput") && npos == 3) {
    dir = pos[0];
    long long total = atoll(pos[1]);
    int n = atoi(pos[2]);
    job_t *jobs = run_jobs(n, tput_job, total / n);
    span(jobs, n, &start, &end, &count, &errors);
    printf("{\"bytes\":%lld,\"seconds\":%.6f,\"errors\":%ld,\"cpu_s\":%.3f,\"cipher\":\"%s\"}\n", (total / n) * count, end - start,
           errors, cpu_s(), cipher);
    return errors ? 1 : 0;
  }
  if (!strcmp(mode, "hs") && npos == 2) {
    int n = atoi(pos[1]);
    duration = atof(pos[0]);
    job_t *jobs = run_jobs(n, hs_job, 0);
    span(jobs, n, &start, &end, &count, &errors);
    printf("{\"handshakes\":%ld,\"seconds\":%.6f,\"errors\":%ld,\"cpu_s\":%.3f,\"cipher\":\"%s\"}\n", count, end - start, errors,
           cpu_s(), cipher);
    return count ? 0 : 1;
  }
  if (!strcmp(mode, "rr") && npos == 3) {
    int n = atoi(pos[1]);
    rr_size = atoi(pos[2]);
    duration = atof(pos[0]);
    job_t *jobs = run_jobs(n, rr_job, 0);
    span(jobs, n, &start, &end, &count, &errors);
    long total = 0;
    for (int i = 0; i < n; i++) total += jobs[i].nlat;
    float *all = malloc((total + 1) * sizeof *all);
    long k = 0;
    for (int i = 0; i < n; i++) {
      memcpy(all + k, jobs[i].lat, jobs[i].nlat * sizeof *all);
      k += jobs[i].nlat;
    }
    qsort(all, total, sizeof *all, cmp_float);
    double p50 = total ? all[(long)(total * 0.50)] : 0, p99 = total ? all[(long)(total * 0.99)] : 0;
    printf("{\"requests\":%ld,\"seconds\":%.6f,\"errors\":%ld,\"p50_us\":%.1f,\"p99_us\":%.1f,\"cpu_s\":%.3f,\"cipher\":\"%s\"}\n",
           total, end - start, errors, p50, p99, cpu_s(), cipher);
    return errors || !total ? 1 : 0;
  }
  if (!strcmp(mode, "hold") && npos == 1) {
    int steps[16], nsteps = 0, have = 0;
    for (const char *p = pos[0]; *p && nsteps < 16; p = strchr(p, ',') ? strchr(p, ',') + 1 : "") steps[nsteps++] = atoi(p);
    held = calloc(steps[nsteps - 1], sizeof *held);
    io_timeout = 10;
    char line[64];
    for (int s = 0; s < nsteps; s++) {
      int want = steps[s] - have, nt = 64; /* many in flight: opening is latency-bound on a busy machine */
      job_t *jobs = calloc(nt, sizeof *jobs);
      for (int i = 0; i < nt; i++) {
        jobs[i].from = have + want * i / nt;
        jobs[i].to = have + want * (i + 1) / nt;
        pthread_create(&jobs[i].t, NULL, hold_job, &jobs[i]);
      }
      errors = 0;
      for (int i = 0; i < nt; i++) pthread_join(jobs[i].t, NULL), errors += jobs[i].errors;
      have = steps[s];
      int alive = 0;
      for (int i = 0; i < have; i++) alive += held[i].fd >= 0;
      printf("{\"held\":%d,\"retries\":%ld,\"cipher\":\"%s\"}\n", alive, errors, cipher);
      fflush(stdout);
      if (!fgets(line, sizeof line, stdin)) return 0;
    }
    while (fgets(line, sizeof line, stdin)) {
    }
    return 0;
  }
  fprintf(stderr, "loadgen: bad arguments (see the header of bench/loadgen.c)\n");
  return 2;
}
