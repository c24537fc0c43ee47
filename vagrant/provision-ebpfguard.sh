#!/bin/sh
# Install ebpfguard from /opt/ebpfguard as a fleet would: build the Debian package there (make deb), install
# it with apt (Debian's python3-bpfcc and Python libraries come with it), and start the agent as the
# service it ships, with the shipped policies in /etc/ebpfguard/policies. Prints what the kernel gives
# (the probe) at the end.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends make
cd /opt/ebpfguard
make setup          # build tools, and the running kernel's headers (bcc compiles against them)
make deb
apt-get install -y ./build/ebpfguard_*_all.deb
systemctl enable --now ebpfguard    # Type=notify: returns once the agent enforces
printf '#!/bin/sh\nexec /usr/bin/python3 -m ebpfguard.kernel.probe "$@"\n' > /usr/local/bin/ebpfguard-probe
chmod 0755 /usr/local/bin/ebpfguard-probe
/usr/local/bin/ebpfguard-probe
if ebpfguard status; then
    echo "ebpfguard: the agent is enforcing"
    exit 0
fi
echo "ebpfguard: the agent does not answer" >&2
journalctl -u ebpfguard --no-pager -n 50 >&2
exit 1
