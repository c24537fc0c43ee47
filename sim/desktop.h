/*
 * desktop.h: egact's desktop-IPC techniques, each spoken directly on the socket so that no client
 * library or program needs a grant of its own, and each going as far as the escape goes:
 *
 *   dbus_call    D-Bus: SASL EXTERNAL, Hello, then one method call; rc 0 on a method return, -1 with
 *                EACCES on an error reply (its name goes to the marker)
 *   x11_list     X11: connection setup, QueryTree of the root window; rc = the number of windows
 *   x11_move     X11: XTEST FakeInput, an absolute pointer motion to (x, y), then a round trip so the
 *                server has done it; rc 0
 *   agent_sign   ssh-agent: list the identities, have the first one sign; rc = the signature's length
 *
 * A refusal by the kernel or the mount namespace comes back from connect() with its errno; a refusal
 * by a protocol peer (the D-Bus proxy, an X server's access control) as rc -1 with EACCES.
 */
#include <stdint.h>

static int unix_stream(const char *path)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(a.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(a.sun_path, path);
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -1;
	struct timeval tv = {.tv_sec = 5};
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(s, (struct sockaddr *)&a, sizeof(a)) < 0) {
		int e = errno;
		close(s);
		errno = e;
		return -1;
	}
	return s;
}

static int read_full(int s, void *buf, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(s, (char *)buf + got, n - got);
		if (r <= 0) {
			if (r == 0)
				errno = ECONNRESET;
			return -1;
		}
		got += r;
	}
	return 0;
}

static int write_full(int s, const void *buf, size_t n)
{
	return write(s, buf, n) == (ssize_t)n ? 0 : -1;
}

static long refused(const char *why)
{
	snprintf(content, sizeof(content), "%s\n", why);
	errno = EACCES;
	return -1;
}

/* ---- D-Bus ------------------------------------------------------------------------------------- */
static size_t dbus_pad(uint8_t *b, size_t off, size_t align)
{
	while (off % align)
		b[off++] = 0;
	return off;
}

static size_t dbus_field(uint8_t *b, size_t off, uint8_t code, char type, const char *val)
{
	off = dbus_pad(b, off, 8);
	b[off++] = code;
	b[off++] = 1;
	b[off++] = type;
	b[off++] = 0;
	off = dbus_pad(b, off, 4);
	uint32_t n = strlen(val);
	memcpy(b + off, &n, 4);
	memcpy(b + off + 4, val, n + 1);
	return off + 4 + n + 1;
}

static int dbus_send_call(int s, uint32_t serial, const char *dest, const char *path, const char *iface,
			  const char *member)
{
	uint8_t b[1024] = {'l', 1 /* METHOD_CALL */, 0, 1};
	if (strlen(dest) + strlen(path) + strlen(iface) + strlen(member) > 900)
		return -1;
	memcpy(b + 8, &serial, 4);
	size_t off = 16;
	off = dbus_field(b, off, 1, 'o', path);
	off = dbus_field(b, off, 2, 's', iface);
	off = dbus_field(b, off, 3, 's', member);
	off = dbus_field(b, off, 6, 's', dest);
	uint32_t fields = off - 16;
	memcpy(b + 12, &fields, 4);
	off = dbus_pad(b, off, 8); /* body_len stays 0 */
	return write_full(s, b, off);
}

/* Read messages until the reply to ``serial``: 2 for a method return, 3 for an error (name in err). */
static int dbus_reply(int s, uint32_t serial, char *err, size_t errlen)
{
	static uint8_t b[65536];
	for (int tries = 0; tries < 32; tries++) {
		if (read_full(s, b, 16) < 0)
			return -1;
		uint32_t body, fields;
		memcpy(&body, b + 4, 4);
		memcpy(&fields, b + 12, 4);
		size_t total = 16 + ((fields + 7) & ~7u) + body;
		if (b[0] != 'l' || total > sizeof(b)) {
			errno = EPROTO;
			return -1;
		}
		if (read_full(s, b + 16, total - 16) < 0)
			return -1;
		uint32_t reply_to = 0;
		err[0] = 0;
		for (size_t off = 16; off + 4 <= 16 + fields;) {
			uint8_t code = b[off], siglen = b[off + 1];
			char type = (char)b[off + 2];
			off += 2 + siglen + 1;
			if (type == 'u') {
				off = (off + 3) & ~3ul;
				if (code == 5)
					memcpy(&reply_to, b + off, 4);
				off += 4;
			} else if (type == 's' || type == 'o') {
				off = (off + 3) & ~3ul;
				uint32_t n;
				memcpy(&n, b + off, 4);
				if (code == 4 && n < errlen) {
					memcpy(err, b + off + 4, n);
					err[n] = 0;
				}
				off += 4 + n + 1;
			} else if (type == 'g') {
				off += 1 + b[off] + 1;
			} else {
				break;
			}
			off = (off + 7) & ~7ul;
		}
		if ((b[1] == 2 || b[1] == 3) && reply_to == serial)
			return b[1];
	}
	errno = EPROTO;
	return -1;
}

/* ADDRESS is a socket path, or "-" for $DBUS_SESSION_BUS_ADDRESS (unix:path=...) */
static long dbus_call(const char *address, const char *dest, const char *path, const char *iface, const char *member)
{
	if (!strcmp(address, "-")) {
		const char *env = getenv("DBUS_SESSION_BUS_ADDRESS");
		if (!env || strncmp(env, "unix:path=", 10)) {
			errno = ENOENT;
			return -1;
		}
		address = env + 10;
	}
	int s = unix_stream(address);
	if (s < 0)
		return -1;
	char line[256], uid[16], hex[40] = "";
	snprintf(uid, sizeof(uid), "%u", (unsigned)getuid());
	for (size_t i = 0; uid[i]; i++)
		snprintf(hex + 2 * i, 3, "%02x", uid[i]);
	int n = snprintf(line, sizeof(line), "AUTH EXTERNAL %s\r\n", hex);
	if (write_full(s, "", 1) < 0 || write_full(s, line, n) < 0)
		return -1;
	ssize_t r = read(s, line, sizeof(line) - 1);
	if (r < 3 || strncmp(line, "OK ", 3))
		return refused("the bus refused authentication");
	if (write_full(s, "BEGIN\r\n", 7) < 0 ||
	    dbus_send_call(s, 1, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello") < 0)
		return -1;
	char err[128];
	if (dbus_reply(s, 1, err, sizeof(err)) != 2)
		return refused("Hello failed");
	if (dbus_send_call(s, 2, dest, path, iface, member) < 0)
		return -1;
	int t = dbus_reply(s, 2, err, sizeof(err));
	close(s);
	if (t == 3)
		return refused(err);
	return t == 2 ? 0 : -1;
}

/* ---- X11 --------------------------------------------------------------------------------------- */
/* Connection setup without authorization; returns the socket and the first screen's root window. */
static int x11_open(const char *path, uint32_t *root)
{
	int s = unix_stream(path);
	if (s < 0)
		return -1;
	uint8_t req[12] = {'l', 0, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0};
	uint8_t head[8];
	if (write_full(s, req, sizeof(req)) < 0 || read_full(s, head, 8) < 0)
		return -1;
	uint16_t extra;
	memcpy(&extra, head + 6, 2);
	static uint8_t b[65536 * 4];
	if (read_full(s, b, (size_t)extra * 4) < 0)
		return -1;
	if (head[0] != 1) {
		close(s);
		return (int)refused("the X server refused the connection");
	}
	uint16_t vendor;
	memcpy(&vendor, b + 16, 2);
	size_t screens = 32 + ((vendor + 3u) & ~3u) + 8u * b[21];
	if (screens + 4 > (size_t)extra * 4) {
		errno = EPROTO;
		return -1;
	}
	memcpy(root, b + screens, 4);
	return s;
}

/* A request whose reply we wait for; returns the reply's 32-byte head in b (and skips its tail). */
static int x11_roundtrip(int s, const void *req, size_t n, uint8_t *b)
{
	if (write_full(s, req, n) < 0)
		return -1;
	for (;;) {
		if (read_full(s, b, 32) < 0)
			return -1;
		if (b[0] == 0) { /* an error */
			errno = EACCES;
			return -1;
		}
		if (b[0] != 1) /* an event */
			continue;
		uint32_t more;
		memcpy(&more, b + 4, 4);
		uint8_t skip[4096];
		for (size_t left = (size_t)more * 4; left;) {
			size_t k = left < sizeof(skip) ? left : sizeof(skip);
			if (read_full(s, skip, k) < 0)
				return -1;
			left -= k;
		}
		return 0;
	}
}

static long x11_list(const char *path)
{
	uint32_t root;
	int s = x11_open(path, &root);
	if (s < 0)
		return -1;
	uint8_t req[8] = {15 /* QueryTree */, 0, 2, 0}, b[32];
	memcpy(req + 4, &root, 4);
	if (x11_roundtrip(s, req, sizeof(req), b) < 0)
		return -1;
	uint16_t children;
	memcpy(&children, b + 16, 2);
	snprintf(content, sizeof(content), "root 0x%x: %u windows\n", root, children);
	close(s);
	return children;
}

static long x11_move(const char *path, int x, int y)
{
	uint32_t root;
	int s = x11_open(path, &root);
	if (s < 0)
		return -1;
	uint8_t q[16] = {98 /* QueryExtension */, 0, 4, 0, 5, 0, 0, 0, 'X', 'T', 'E', 'S', 'T', 0, 0, 0}, b[32];
	if (x11_roundtrip(s, q, sizeof(q), b) < 0)
		return -1;
	if (!b[8])
		return refused("no XTEST on this server");
	uint8_t f[36] = {b[9], 2 /* FakeInput */, 9, 0, 6 /* MotionNotify */, 0 /* absolute */};
	int16_t px = (int16_t)x, py = (int16_t)y;
	memcpy(f + 12, &root, 4);
	memcpy(f + 24, &px, 2);
	memcpy(f + 26, &py, 2);
	uint8_t sync[4] = {43 /* GetInputFocus */, 0, 1, 0};
	if (write_full(s, f, sizeof(f)) < 0 || x11_roundtrip(s, sync, sizeof(sync), b) < 0)
		return -1;
	close(s);
	return 0;
}

/* ---- ssh-agent --------------------------------------------------------------------------------- */
static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

static int agent_msg(int s, const uint8_t *req, size_t n, uint8_t *b, size_t cap, uint32_t *len)
{
	uint8_t head[4];
	if (write_full(s, req, n) < 0 || read_full(s, head, 4) < 0)
		return -1;
	*len = be32(head);
	if (*len == 0 || *len > cap) {
		errno = EPROTO;
		return -1;
	}
	return read_full(s, b, *len);
}

static long agent_sign(const char *path)
{
	int s = unix_stream(path);
	if (s < 0)
		return -1;
	static uint8_t b[16384], req[8192];
	uint32_t len;
	const uint8_t list[5] = {0, 0, 0, 1, 11 /* REQUEST_IDENTITIES */};
	if (agent_msg(s, list, sizeof(list), b, sizeof(b), &len) < 0)
		return -1;
	if (b[0] != 12 || len < 9 || be32(b + 1) == 0)
		return refused("the agent listed no identity");
	uint32_t blob = be32(b + 5);
	if (blob > len - 9 || blob > sizeof(req) - 64) {
		errno = EPROTO;
		return -1;
	}
	const char data[] = "ebpfguard-simulate";
	size_t off = 4;
	req[off++] = 13; /* SIGN_REQUEST */
	put_be32(req + off, blob);
	memcpy(req + off + 4, b + 9, blob);
	off += 4 + blob;
	put_be32(req + off, sizeof(data) - 1);
	memcpy(req + off + 4, data, sizeof(data) - 1);
	off += 4 + sizeof(data) - 1;
	put_be32(req + off, 0);
	off += 4;
	put_be32(req, off - 4);
	if (agent_msg(s, req, off, b, sizeof(b), &len) < 0)
		return -1;
	close(s);
	if (b[0] != 14 /* SIGN_RESPONSE */)
		return refused("the agent refused to sign");
	snprintf(content, sizeof(content), "signed with the user's key: %u-byte signature\n", len - 5);
	return len - 5;
}
