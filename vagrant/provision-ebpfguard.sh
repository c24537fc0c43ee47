#!/bin/sh
# Install ebpfguard from /opt/ebpfguard as the README's `make run` does, and run the agent as a service
# with the shipped policies. Prints what the kernel gives (the probe) at the end.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends make
cd /opt/ebpfguard
make setup
ln -sf /opt/ebpfguard/.venv/bin/ebpfguard /usr/local/bin/ebpfguard
printf '#!/bin/sh\nexec /opt/ebpfguard/.venv/bin/python -m ebpfguard.kernel.probe "$@"\n' > /usr/local/bin/ebpfguard-probe
chmod 0755 /usr/local/bin/ebpfguard-probe
mkdir -p /etc/ebpfguard
rm -rf /etc/ebpfguard/policies && cp -r policies /etc/ebpfguard/policies
sed "s|/usr/bin/ebpfguard|/opt/ebpfguard/.venv/bin/ebpfguard|" contrib/ebpfguard.service > /etc/systemd/system/ebpfguard.service
systemctl daemon-reload
systemctl enable --now ebpfguard
/usr/local/bin/ebpfguard-probe
for _ in $(seq 1 60); do
    ebpfguard status >/dev/null 2>&1 && { echo "ebpfguard: the agent is enforcing"; ebpfguard status; exit 0; }
    sleep 1
done
echo "ebpfguard: the agent did not answer within 60 s" >&2
journalctl -u ebpfguard --no-pager -n 50 >&2
exit 1
