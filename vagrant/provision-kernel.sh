#!/bin/sh
# Kernel command line for ebpfguard: "bpf" appended to the active LSMs (the running order is kept,
# so AppArmor or SELinux stay as they are) and pure cgroup v2. Vagrant reboots afterwards.
set -eu
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null || true
active=$(cat /sys/kernel/security/lsm)
case ",$active," in
*,bpf,*) lsm="$active" ;;
*) lsm="$active,bpf" ;;
esac
[ "${EG_BPF_LSM:-1}" = 1 ] || lsm=$(echo ",$active," | sed 's/,bpf,/,/; s/^,//; s/,$//')
args="lsm=$lsm systemd.unified_cgroup_hierarchy=1"
mkdir -p /etc/default/grub.d
printf 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT %s"\n' "$args" > /etc/default/grub.d/90-ebpfguard.cfg
if command -v update-grub >/dev/null; then update-grub; else grub2-mkconfig -o /boot/grub2/grub.cfg; fi
echo "ebpfguard: kernel command line gets: $args (after the reboot)"
