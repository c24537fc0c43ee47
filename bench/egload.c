/*
 * egload: the benchmark's workloads, in C so that the interpreter's cost does not dilute the
 * kernel-side cost being measured. Prints the loop's elapsed nanoseconds (CLOCK_MONOTONIC).
 *
 *   egload open N PATH       N x open(PATH, O_RDONLY) + close
 *   egload connect N         N x TCP connect + accept + close on a 127.0.0.1 listener of its own
 *   egload uconnect N PATH   N x unix stream connect(PATH) + close (the listener is `egload userve PATH`)
 *   egload userve PATH       listen on the unix socket PATH (mode 0666), print "ready", accept + close until
 *                            killed (the benchmark starts it outside the extension: a socket the extension
 *                            may connect to cannot be one it may create)
 *   egload forkexec N SELF   N x fork + execv(SELF, "noop") + wait
 *   egload stat N DIR        N x a walk of the tree under DIR: lstat every entry (nftw, no symlinks)
 *   egload sh N CMD          N x /bin/sh -c CMD (a real job), status 0 required
 *   egload noop
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long entries;

static int visit(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	struct stat again;
	(void)st; (void)flag; (void)f;
	if (lstat(path, &again) == 0)
		entries++;
	return 0;
}

static long long now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	if (!strcmp(argv[1], "noop"))
		return 0;
	if (!strcmp(argv[1], "userve") && argc > 2) {
		struct sockaddr_un u = {.sun_family = AF_UNIX};
		if (strlen(argv[2]) >= sizeof(u.sun_path))
			return 2;
		strcpy(u.sun_path, argv[2]);
		unlink(argv[2]);
		int l = socket(AF_UNIX, SOCK_STREAM, 0);
		if (l < 0 || bind(l, (struct sockaddr *)&u, sizeof(u)) || chmod(argv[2], 0666) || listen(l, 4096))
			return 3;
		printf("ready\n");
		fflush(stdout);
		for (;;) {
			int s = accept(l, 0, 0);
			if (s >= 0)
				close(s);
		}
	}
	if (argc < 3)
		return 2;
	long n = atol(argv[2]);
	long long t0 = 0, t1 = 0;
	if (!strcmp(argv[1], "open") && argc > 3) {
		t0 = now();
		for (long i = 0; i < n; i++) {
			int fd = open(argv[3], O_RDONLY);
			if (fd < 0)
				return 3;
			close(fd);
		}
		t1 = now();
	} else if (!strcmp(argv[1], "connect")) {
		int l = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in a = {.sin_family = AF_INET};
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		socklen_t len = sizeof(a);
		if (bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 128) ||
		    getsockname(l, (struct sockaddr *)&a, &len))
			return 3;
		t0 = now();
		for (long i = 0; i < n; i++) {
			int c = socket(AF_INET, SOCK_STREAM, 0);
			if (connect(c, (struct sockaddr *)&a, sizeof(a)))
				return 4;
			int s = accept(l, 0, 0);
			close(s);
			close(c);
		}
		t1 = now();
	} else if (!strcmp(argv[1], "uconnect") && argc > 3) {
		struct sockaddr_un u = {.sun_family = AF_UNIX};
		if (strlen(argv[3]) >= sizeof(u.sun_path))
			return 2;
		strcpy(u.sun_path, argv[3]);
		t0 = now();
		for (long i = 0; i < n; i++) {
			int c = socket(AF_UNIX, SOCK_STREAM, 0);
			if (c < 0 || connect(c, (struct sockaddr *)&u, sizeof(u)))
				return 4;
			close(c);
		}
		t1 = now();
	} else if (!strcmp(argv[1], "forkexec") && argc > 3) {
		t0 = now();
		for (long i = 0; i < n; i++) {
			pid_t p = fork();
			if (p == 0) {
				char *args[] = {argv[3], "noop", 0};
				execv(argv[3], args);
				_exit(5);
			}
			int st;
			waitpid(p, &st, 0);
			if (!WIFEXITED(st) || WEXITSTATUS(st))
				return 5;
		}
		t1 = now();
	} else if (!strcmp(argv[1], "stat") && argc > 3) {
		t0 = now();
		for (long i = 0; i < n; i++)
			if (nftw(argv[3], visit, 32, FTW_PHYS) != 0)
				return 6;
		t1 = now();
		if (entries == 0)
			return 6;
	} else if (!strcmp(argv[1], "sh") && argc > 3) {
		t0 = now();
		for (long i = 0; i < n; i++) {
			pid_t p = fork();
			if (p == 0) {
				execl("/bin/sh", "sh", "-c", argv[3], (char *)0);
				_exit(7);
			}
			int st;
			waitpid(p, &st, 0);
			if (!WIFEXITED(st) || WEXITSTATUS(st))
				return 7;
		}
		t1 = now();
	} else {
		return 2;
	}
	printf("%lld\n", t1 - t0);
	return 0;
}
