/*
 * egact: the test extension of the kernel tier and of `ebpfguard simulate`. It performs exactly one
 * action, then writes "<rc> <errno> <t0> <t1>\n" to MARKER, t0 and t1 being CLOCK_REALTIME ns just
 * before and just after the action. A process killed in the kernel at the action never writes MARKER.
 *
 *   egact MARKER read PATH | write PATH | readat DIR NAME | chdir-read DIR RELPATH
 *   egact MARKER exec PATH ARG...          (execs PATH with ARG... as its argv[1..])
 *   egact MARKER connect4|connect6 PORT | udp4 PORT | bind4 PORT
 *   egact MARKER sys NR [A0 [A1 [A2 [A3]]]]
 *   egact MARKER flood N PATH              (N opens of PATH, for the drop accounting test)
 *   egact MARKER flood-distinct N DIR [MS] (opens of DIR/0 .. DIR/N-1: N different violations, MS ms apart)
 *   egact MARKER floodfor SECONDS PATH     (opens of PATH for SECONDS; rc = how many)
 *   egact MARKER floodfor-distinct SECONDS DIR   (opens of DIR/0, DIR/1, ... for SECONDS)
 *   egact MARKER noop
 * Escape techniques (the containment tier); reads append what they read to MARKER:
 *   egact MARKER symlink-read TARGET LINK | hardlink-read TARGET LINK | opath-reopen PATH
 *   egact MARKER toctou GOOD BAD N       (a thread flips the path buffer; rc = opens that read BAD)
 *   egact MARKER memfd | io-uring | unshare-user | clone-newuser | ptrace PID | kill PID SIG | cgroup-move PROCSFILE
 *   egact MARKER forkbomb N | membomb MB
 *   egact MARKER append PATH TEXT | whoami (rc = euid) | socket FAMILY TYPE PROTO | raise FILE VALUE
 *   egact MARKER unix-connect PATH TEXT | unix-dgram PATH TEXT   (connect + send, or sendto, a pathname socket)
 *   egact MARKER chmod PATH OCTAL | chown PATH UID GID | utimes PATH EPOCH | setxattr PATH NAME VALUE
 *   egact MARKER mkdir PATH | mknod-fifo PATH
 *   egact MARKER dbus-call ADDRESS DEST PATH IFACE MEMBER   (ADDRESS: a socket path, or - for the
 *                                                            session bus address in the environment)
 *   egact MARKER x11-list SOCKET | x11-move SOCKET X Y | agent-sign SOCKET   (desktop.h)
 * The ladder: a process that lives on after its violations, so that its state can be observed:
 *   egact MARKER violate-then-count PATH N COUNTER   (N reads of PATH 20 ms apart, then COUNTER += 1
 *                                                     every 10 ms, forever)
 *   egact MARKER connect-seq BADPORT OKPORT          (rc of the second connect, 300 ms after the first)
 *   egact MARKER read-connect PATH PORT LINGER_MS    (read PATH, connect, stay LINGER_MS: a correlation)
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
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char content[256];

static long read_into_content(long fd)
{
	if (fd >= 0) {
		ssize_t n = read(fd, content, sizeof(content) - 1);
		content[n > 0 ? n : 0] = 0;
	}
	return fd;
}

static char flip_buf[512];
static const char *flip_a, *flip_b;
static volatile int flip_stop;

static void *flipper(void *arg)
{
	(void)arg;
	while (!flip_stop) {
		strcpy(flip_buf, flip_a);
		strcpy(flip_buf, flip_b);
	}
	return 0;
}

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long t_start;

static long marker(const char *path, long rc, int err)
{
	char buf[96];
	long long t_end = now_ns();
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return 3;
	int n = snprintf(buf, sizeof(buf), "%ld %d %lld %lld\n", rc, err, t_start, t_end);
	if (write(fd, buf, n) != n)
		return 3;
	if (content[0] && write(fd, content, strlen(content)) < 0)
		return 3;
	close(fd);
	return 0;
}

/* the first bytes of a file, whatever the outcome: the first step of a sequence (the rc is the step after it) */
static void read_head(const char *path)
{
	char buf[64];
	int fd = open(path, O_RDONLY);
	if (fd >= 0) {
		if (read(fd, buf, sizeof(buf)) < 0)
			buf[0] = 0;
		close(fd);
	}
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

#include "desktop.h"

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	const char *m = argv[1], *act = argv[2];
	long rc = 0;
	errno = 0;
	t_start = now_ns();
	if (!strcmp(act, "noop")) {
		rc = 0;
	} else if (!strcmp(act, "read") && argc > 3) {
		rc = read_into_content(open(argv[3], O_RDONLY));
	} else if (!strcmp(act, "symlink-read") && argc > 4) {
		rc = symlink(argv[3], argv[4]);
		if (rc == 0)
			rc = read_into_content(open(argv[4], O_RDONLY));
	} else if (!strcmp(act, "hardlink-read") && argc > 4) {
		rc = link(argv[3], argv[4]);
		if (rc == 0)
			rc = read_into_content(open(argv[4], O_RDONLY));
	} else if (!strcmp(act, "opath-reopen") && argc > 3) {
		int p = open(argv[3], O_PATH);
		char via[64];
		snprintf(via, sizeof(via), "/proc/self/fd/%d", p);
		rc = p < 0 ? p : read_into_content(open(via, O_RDONLY));
	} else if (!strcmp(act, "toctou") && argc > 5) {
		pthread_t t;
		flip_a = argv[3];
		flip_b = argv[4];
		strcpy(flip_buf, flip_a);
		pthread_create(&t, 0, flipper, 0);
		long leaks = 0, n = atol(argv[5]);
		for (long i = 0; i < n; i++) {
			int fd = open(flip_buf, O_RDONLY);
			if (fd < 0)
				continue;
			char b[64] = {0};
			if (read(fd, b, sizeof(b) - 1) > 0 && strstr(b, "SECRET"))
				leaks++;
			close(fd);
		}
		flip_stop = 1;
		pthread_join(t, 0);
		rc = leaks;
	} else if (!strcmp(act, "memfd")) {
		rc = syscall(SYS_memfd_create, "x", 0);
	} else if (!strcmp(act, "io-uring")) {
		char params[120] = {0};
		rc = syscall(SYS_io_uring_setup, 8, params);
	} else if (!strcmp(act, "unshare-user")) {
		rc = unshare(CLONE_NEWUSER);
	} else if (!strcmp(act, "clone-newuser")) {
		rc = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
		if (rc == 0)
			_exit(0);
		if (rc > 0)
			waitpid(rc, 0, 0);
	} else if (!strcmp(act, "ptrace") && argc > 3) {
		rc = ptrace(PTRACE_ATTACH, atoi(argv[3]), 0, 0);
	} else if (!strcmp(act, "kill") && argc > 4) {
		rc = kill(atoi(argv[3]), atoi(argv[4]));
	} else if (!strcmp(act, "cgroup-move") && argc > 3) {
		int fd = open(argv[3], O_WRONLY);
		rc = fd < 0 ? fd : write(fd, "0", 1);
	} else if (!strcmp(act, "forkbomb") && argc > 3) {
		static pid_t kids[8192];
		long n = atol(argv[3]), ok = 0;
		int first_err = 0;
		if (n > 8192)
			n = 8192;
		for (long i = 0; i < n; i++) {
			pid_t p = fork();
			if (p == 0) {
				pause();
				_exit(0);
			}
			if (p < 0) {
				if (!first_err)
					first_err = errno;
				continue;
			}
			kids[ok++] = p;
		}
		marker(m, ok, first_err);
		for (long i = 0; i < ok; i++) /* take the bomb down with us */
			kill(kids[i], SIGKILL);
		while (wait(0) > 0)
			;
		return 0;
	} else if (!strcmp(act, "violate-then-count") && argc > 5) {
		long n = atol(argv[4]);
		for (long i = 0; i < n; i++) {
			int fd = open(argv[3], O_RDONLY);
			if (fd >= 0)
				close(fd);
			usleep(20000);
		}
		marker(m, n, 0);
		for (long count = 1;; count++) {
			char b[32];
			int fd = open(argv[5], O_WRONLY | O_CREAT | O_TRUNC, 0644);
			if (fd >= 0) {
				int len = snprintf(b, sizeof(b), "%ld\n", count);
				if (write(fd, b, len) < 0)
					return 3;
				close(fd);
			}
			usleep(10000);
		}
	} else if (!strcmp(act, "read-connect") && argc > 5) {
		/* a credential read, then a connect, then LINGER_MS alive: a correlation and its response */
		read_head(argv[3]);
		rc = tcp_connect(AF_INET, atoi(argv[4]));
		usleep(atol(argv[5]) * 1000);
	} else if (!strcmp(act, "read-dbus-call") && argc > 9) {
		/* a credential read, then a D-Bus call, then LINGER_MS alive: the same over the session bus */
		read_head(argv[3]);
		rc = dbus_call(argv[4], argv[5], argv[6], argv[7], argv[8]);
		usleep(atol(argv[9]) * 1000);
	} else if (!strcmp(act, "connect-seq") && argc > 4) {
		tcp_connect(AF_INET, atoi(argv[3]));
		usleep(300000);
		rc = tcp_connect(AF_INET, atoi(argv[4]));
	} else if (!strcmp(act, "membomb") && argc > 3) {
		long mb = atol(argv[3]);
		for (long i = 0; i < mb; i++) {
			char *p = malloc(1 << 20);
			if (!p)
				break;
			memset(p, 1, 1 << 20);
			rc = i + 1;
		}
	} else if (!strcmp(act, "append") && argc > 4) {
		int fd = open(argv[3], O_WRONLY | O_APPEND | O_CREAT, 0644);
		rc = fd < 0 ? fd : write(fd, argv[4], strlen(argv[4]));
	} else if ((!strcmp(act, "unix-connect") || !strcmp(act, "unix-dgram")) && argc > 4) {
		int dgram = !strcmp(act, "unix-dgram");
		struct sockaddr_un a = {.sun_family = AF_UNIX};
		strncpy(a.sun_path, argv[3], sizeof(a.sun_path) - 1);
		int s = socket(AF_UNIX, dgram ? SOCK_DGRAM : SOCK_STREAM, 0);
		if (dgram) {
			rc = sendto(s, argv[4], strlen(argv[4]), 0, (struct sockaddr *)&a, sizeof(a));
		} else {
			rc = connect(s, (struct sockaddr *)&a, sizeof(a));
			if (rc == 0)
				rc = write(s, argv[4], strlen(argv[4]));
		}
	} else if (!strcmp(act, "dbus-call") && argc > 7) {
		rc = dbus_call(argv[3], argv[4], argv[5], argv[6], argv[7]);
	} else if (!strcmp(act, "x11-list") && argc > 3) {
		rc = x11_list(argv[3]);
	} else if (!strcmp(act, "x11-move") && argc > 5) {
		rc = x11_move(argv[3], atoi(argv[4]), atoi(argv[5]));
	} else if (!strcmp(act, "agent-sign") && argc > 3) {
		rc = agent_sign(argv[3]);
	} else if (!strcmp(act, "mkdir") && argc > 3) {
		rc = mkdir(argv[3], 0755);
	} else if (!strcmp(act, "mknod-fifo") && argc > 3) {
		rc = mknod(argv[3], S_IFIFO | 0644, 0);
	} else if (!strcmp(act, "chmod") && argc > 4) {
		rc = chmod(argv[3], strtol(argv[4], 0, 8));
	} else if (!strcmp(act, "chown") && argc > 5) {
		rc = chown(argv[3], atoi(argv[4]), atoi(argv[5]));
	} else if (!strcmp(act, "utimes") && argc > 4) {
		struct timespec ts[2] = {{.tv_sec = atol(argv[4])}, {.tv_sec = atol(argv[4])}};
		rc = utimensat(AT_FDCWD, argv[3], ts, 0);
	} else if (!strcmp(act, "setxattr") && argc > 5) {
		rc = setxattr(argv[3], argv[4], argv[5], strlen(argv[5]), 0);
	} else if (!strcmp(act, "whoami")) {
		rc = geteuid();
	} else if (!strcmp(act, "socket") && argc > 5) {
		rc = socket(atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
	} else if (!strcmp(act, "raise") && argc > 4) {
		int fd = open(argv[3], O_WRONLY);
		rc = fd < 0 ? fd : write(fd, argv[4], strlen(argv[4]));
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
	} else if ((!strcmp(act, "floodfor") || !strcmp(act, "floodfor-distinct")) && argc > 4) {
		long long end = now_ns() + (long long)(atof(argv[3]) * 1e9);
		int distinct = !strcmp(act, "floodfor-distinct");
		char p[300];
		for (rc = 0; now_ns() < end;) {
			for (int k = 0; k < 64; k++, rc++) {
				if (distinct)
					snprintf(p, sizeof(p), "%s/%ld", argv[4], rc);
				int fd = open(distinct ? p : argv[4], O_RDONLY);
				if (fd >= 0)
					close(fd);
			}
		}
	} else if (!strcmp(act, "flood-distinct") && argc > 4) {
		long n = atol(argv[3]);
		long ms = argc > 5 ? atol(argv[5]) : 0;
		char p[300];
		for (long i = 0; i < n; i++) {
			snprintf(p, sizeof(p), "%s/%ld", argv[4], i);
			int fd = open(p, O_RDONLY);
			if (fd >= 0)
				close(fd);
			if (ms)
				usleep(ms * 1000);
		}
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
