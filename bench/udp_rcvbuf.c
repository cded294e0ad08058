/* bench/udp_rcvbuf.so: an LD_PRELOAD shim for bench/compare's direct HTTP/3
 * reference. ngtcp2's example client (gtlsclient) keeps its UDP socket at the
 * kernel's default receive buffer (net.core.rmem_default, ~208 KiB), where
 * the bursts of a GSO sender overflow between two reads and the sender's
 * congestion control takes the drops for congestion; muxd asks for
 * QUIC_RCVBUF (src/transport/quic_int.h). This gives every UDP socket the
 * process creates the same SO_RCVBUF, so that only the proxy hop differs.
 *
 *   LD_PRELOAD=build/bench/udp_rcvbuf.so UDP_RCVBUF=2097152 gtlsclient ...
 *
 * UDP_RCVBUF is in bytes (capped by net.core.rmem_max, doubled by the
 * kernel, as for muxd); unset or 0 leaves the sockets alone. Not part of
 * muxd. */

#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>

int socket(int domain, int type, int protocol)
{
	static int (*real)(int, int, int);
	int fd, size;
	const char *env;

	if (!real)
		*(void **)&real = dlsym(RTLD_NEXT, "socket");
	if (!real)
		return -1;
	fd = real(domain, type, protocol);
	env = getenv("UDP_RCVBUF");
	size = env ? atoi(env) : 0;
	if (fd >= 0 && size > 0 && (domain == AF_INET || domain == AF_INET6) &&
	    (type & 0xff) == SOCK_DGRAM)
		(void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
	return fd;
}
