/* Raw protocol clients for the memory-server tests: connections (from a
 * chosen loopback source address), whole sends and receives on a blocking
 * socket, request headers and reply decoding. */
#ifndef GVM_TEST_RAWSOCK_H
#define GVM_TEST_RAWSOCK_H

#include <errno.h>
#include <stdint.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "proto.h"

static inline int send_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* -ECONNRESET when the peer closes first. */
static inline int recv_all(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = recv(fd, p, len, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ECONNRESET;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static inline void mk_hdr(uint8_t *out, uint16_t op, uint64_t id, uint64_t region, uint64_t page,
			  uint32_t count, uint32_t len)
{
	struct gvm_hdr h = {
		.magic = GVM_PROTO_MAGIC, .version = GVM_PROTO_VERSION, .op = op, .id = id,
		.region = region, .page = page, .count = count, .len = len,
	};
	gvm_hdr_encode(&h, out);
}

/* A blocking TCP connection to 127.0.0.1:port, from source address src
 * (127.0.0.x) when given, send and receive bounded by timeout_ms; fd or -errno. */
static inline int tcp_from(const char *src, int port, int timeout_ms)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	struct sockaddr_in b = { .sin_family = AF_INET };
	struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if ((src && inet_pton(AF_INET, src, &b.sin_addr) != 1) ||
	    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
	    (src && bind(fd, (struct sockaddr *)&b, sizeof(b)) < 0) ||
	    connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		int r = errno ? -errno : -EINVAL;
		close(fd);
		return r;
	}
	return fd;
}

/* Reply header (+ payload into buf when given). 0 or -errno. */
static inline int raw_reply(int fd, struct gvm_hdr *h, uint8_t *buf, size_t cap)
{
	uint8_t raw[GVM_HDR_SIZE];
	const char *why;
	int r;

	if ((r = recv_all(fd, raw, sizeof(raw))) < 0)
		return r;
	if (gvm_hdr_decode(raw, 1, h, &why) < 0) {
		fprintf(stderr, "  bad reply header: %s\n", why);
		return -EPROTO;
	}
	if (h->len > cap)
		return -EMSGSIZE;
	return h->len ? recv_all(fd, buf, h->len) : 0;
}

#endif
