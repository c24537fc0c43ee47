/*
 * egact: the kernel tier's test extension. It performs exactly one action, then writes
 * "<rc> <errno>\n" to MARKER. A process killed in the kernel at the action never writes MARKER.
 *
 *   egact MARKER read PATH | write PATH | readat DIR NAME | chdir-read DIR RELPATH
 *   egact MARKER exec PATH ARG...          (execs PATH with ARG... as its argv[1..])
 *   egact MARKER connect4|connect6 PORT | udp4 PORT | bind4 PORT
 *   egact MARKER sys NR [A0 [A1 [A2 [A3]]]]
 *   egact MARKER flood N PATH              (N opens of PATH, for the drop accounting test)
 *   egact MARKER noop
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static long marker(const char *path, long rc, int err)
{
	char buf[64];
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return 3;
	int n = snprintf(buf, sizeof(buf), "%ld %d\n", rc, err);
	if (write(fd, buf, n) != n)
		return 3;
	close(fd);
	return 0;
}

static long tcp_connect(int family, int port)
{
	int s = socket(family, SOCK_STREAM, 0);
	if (s < 0)
		return -1;
	if (family == AF_INET) {
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		return connect(s, (struct sockaddr *)&a, sizeof(a));
	}
	struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
	a6.sin6_addr = in6addr_loopback;
	return connect(s, (struct sockaddr *)&a6, sizeof(a6));
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	const char *m = argv[1], *act = argv[2];
	long rc = 0;
	errno = 0;
	if (!strcmp(act, "noop")) {
		rc = 0;
	} else if (!strcmp(act, "read") && argc > 3) {
		rc = open(argv[3], O_RDONLY);
	} else if (!strcmp(act, "write") && argc > 3) {
		rc = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	} else if (!strcmp(act, "readat") && argc > 4) {
		int d = open(argv[3], O_RDONLY | O_DIRECTORY);
		rc = openat(d, argv[4], O_RDONLY);
	} else if (!strcmp(act, "chdir-read") && argc > 4) {
		if (chdir(argv[3]) == 0)
			rc = open(argv[4], O_RDONLY);
		else
			rc = -2;
	} else if (!strcmp(act, "exec") && argc > 3) {
		execv(argv[3], &argv[3]);
		rc = -1;
	} else if (!strcmp(act, "connect4") && argc > 3) {
		rc = tcp_connect(AF_INET, atoi(argv[3]));
	} else if (!strcmp(act, "connect6") && argc > 3) {
		rc = tcp_connect(AF_INET6, atoi(argv[3]));
	} else if (!strcmp(act, "udp4") && argc > 3) {
		int s = socket(AF_INET, SOCK_DGRAM, 0);
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		rc = sendto(s, "egact", 5, 0, (struct sockaddr *)&a, sizeof(a));
	} else if (!strcmp(act, "bind4") && argc > 3) {
		int s = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		rc = bind(s, (struct sockaddr *)&a, sizeof(a));
	} else if (!strcmp(act, "sys") && argc > 3) {
		long a[4] = {0, 0, 0, 0};
		for (int i = 0; i < 4 && 4 + i < argc; i++)
			a[i] = strtol(argv[4 + i], 0, 0);
		rc = syscall(atol(argv[3]), a[0], a[1], a[2], a[3]);
	} else if (!strcmp(act, "flood") && argc > 4) {
		long n = atol(argv[3]);
		for (long i = 0; i < n; i++) {
			int fd = open(argv[4], O_RDONLY);
			if (fd >= 0)
				close(fd);
		}
	} else {
		return 2;
	}
	int err = rc < 0 ? errno : 0;
	return (int)marker(m, rc, err);
}
