/* Raw protocol clients for the memory-server tests: whole sends and
 * receives on a blocking socket, and a request header. */
#ifndef GVM_TEST_RAWSOCK_H
#define GVM_TEST_RAWSOCK_H

#include <errno.h>
#include <stdint.h>
#include <sys/socket.h>

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

#endif
