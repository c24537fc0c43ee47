#!/bin/sh
# Build OUT/ebpfguard_VERSION_all.deb from this checkout (make deb): the wheel's package (with bpf/,
# policies/, sim/ and bench/ inside it) under /usr/lib/python3/dist-packages, /usr/bin/ebpfguard, the
# units (the agent's; the desktop notifier's user unit and its XDG autostart entry), the shipped policies as conffiles in /etc/ebpfguard/policies. Python dependencies are Debian's.
# usage: contrib/deb/build.sh PIP OUT
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
pip=${1:?usage: build.sh PIP OUTDIR}
out=${2:?usage: build.sh PIP OUTDIR}
version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$top/pyproject.toml")
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
"$pip" wheel -q --no-deps -w "$stage/wheel" "$top"
"$pip" install -q --no-deps --no-compile --target "$root/usr/lib/python3/dist-packages" "$stage"/wheel/*.whl
rm -rf "$root/usr/lib/python3/dist-packages/bin"  # a console script for another interpreter
rm -f "$root"/usr/lib/python3/dist-packages/ebpfguard-*.dist-info/direct_url.json  # the build's own path
install -d "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/ebpfguard/policies" "$root/usr/share/doc/ebpfguard" \
    "$root/DEBIAN"
printf '#!/usr/bin/python3\nimport sys\n\nfrom ebpfguard.cli.main import main\n\nsys.exit(main())\n' > "$root/usr/bin/ebpfguard"
chmod 0755 "$root/usr/bin/ebpfguard"
install -m 0644 "$top/contrib/ebpfguard.service" "$top/contrib/ebpfguard.socket" "$root/lib/systemd/system/"
install -m 0644 "$top/contrib/ebpfguard-verify.service" "$top/contrib/ebpfguard-verify.timer" "$root/lib/systemd/system/"
# the desktop notifier: a systemd user unit, and an XDG autostart entry for sessions without systemd --user
install -d "$root/usr/lib/systemd/user" "$root/etc/xdg/autostart"
install -m 0644 "$top/contrib/ebpfguard-notify.service" "$root/usr/lib/systemd/user/"
install -m 0644 "$top/contrib/ebpfguard-notify.desktop" "$root/etc/xdg/autostart/"
for f in "$top"/policies/*.yaml; do
    install -m 0644 "$f" "$root/etc/ebpfguard/policies/"
done
install -m 0644 "$top/README.md" "$root/usr/share/doc/ebpfguard/"
install -d "$root/usr/share/doc/ebpfguard/docs"  # where the README's links lead
install -m 0644 "$top"/docs/*.md "$top"/docs/*.png "$root/usr/share/doc/ebpfguard/docs/"  # png: notify.md's screenshot
install -m 0644 "$top/docs/incident-schema.json" "$root/usr/share/doc/ebpfguard/docs/"  # incidents.md's schema
# the fleet's rsyslog configurations (docs/fleet.md): examples to copy, never active as installed
install -d "$root/usr/share/doc/ebpfguard/examples/rsyslog"
install -m 0644 "$top"/contrib/rsyslog/*.conf "$root/usr/share/doc/ebpfguard/examples/rsyslog/"
install -d "$root/usr/share/man/man1"
for f in "$top"/man/man1/*.1; do
    gzip -9n -c "$f" > "$root/usr/share/man/man1/$(basename "$f").gz"
done
chmod 0644 "$root"/usr/share/man/man1/*.gz
(cd "$root" && find etc -type f | sed 's#^#/#' | sort) > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" "$here/control.in" > "$root/DEBIAN/control"
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$root/DEBIAN/"
mkdir -p "$out"
dpkg-deb --root-owner-group -Zxz --build "$root" "$out/ebpfguard_${version}_all.deb" >/dev/null
echo "$out/ebpfguard_${version}_all.deb"
