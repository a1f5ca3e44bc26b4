#!/bin/busybox sh
# /init of the VMM image pair built by `cargo qemu vmm-images`
# (qemu/src/linux/vmm-init.sh), the only file of vmm-boot.img's ramdisk:
# everything it runs comes from vmm-vendor_boot.img's vendor ramdisk
# (busybox, /lib/modules/pkvm_rs.ko, the smoke test, pkvm-vmm, /guest/),
# which the kernel unpacked first, as on a GKI device. The Linux host
# under el2 runs its VMM end to end: init checks the vendor ramdisk's
# payloads are there, loads the host driver (pkvm_rs.ko), runs the
# driver's smoke test, runs pkvm-vmm with the test guest and (when the
# image has it) the pKVM Linux guest, checks every exit status and the
# driver's teardown lines, unloads the driver, and prints one VMM-* marker
# per step; the QEMU test linux_host_vmm_end_to_end reads them from the
# console. Then it powers off (QEMU exits 0); on the first failure it
# prints `VMM-FAILED: <what> (status N)` and reboots instead (el2 turns
# the host's reset into exit status 12). With `pkvm.shell` on the kernel
# command line it gives an interactive shell, with the driver loaded
# again, after the checks.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "VMM-INIT: init (pid $$) runs on Linux $(uname -r), image ${pkvm_image:-unknown}"

# `pkvm.shell` stays in /proc/cmdline (the kernel takes a dotted word for
# a module parameter and does not pass it to init).
shell=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        pkvm.shell) shell=1 ;;
    esac
done

# The interactive shell of `pkvm.shell`, with what to try in it. setsid
# gives it a session and cttyhack the console's real tty (ttyAMA0) as its
# controlling terminal, so pkvm-vmm can put it in raw mode for its guest.
interactive() {
    echo "VMM-SHELL: an interactive shell on the console; leave it (exit or Ctrl-D) to end the run. Try:"
    echo "  pkvm-vmm run --cpus 2 --protected-vm /guest/testguest.bin"
    if [ -e /guest/Image ]; then
        echo "  pkvm-vmm run --mem 256 --cpus 2 --initrd /guest/initramfs.cpio --params '$(cat /guest/params) guest.shell' --protected-vm /guest/Image"
    fi
    echo "  (the guest's console is this one; a Linux guest with guest.shell gives its own shell: exit it to power the guest off)"
    cd /
    HOME=/ PS1='pkvm-host# ' setsid cttyhack sh
    echo "VMM-SHELL-EXIT: the shell exited with status $?"
}

# The end of a failed run: the first failure, then a reset (status 12).
fail() {
    echo "VMM-FAILED: $1 (status $2)"
    [ -n "$shell" ] && interactive
    reboot -f
    # Not reached: reboot -f resets through PSCI at once.
    sleep 1000000
}

# What pkvm-vmm's exit statuses mean (its --help).
meaning() {
    case "$1" in
        0) echo "the guest powered off" ;;
        8) echo "the guest reported failing checks" ;;
        9) echo "the guest reset" ;;
        10) echo "the guest crashed (el2 stopped a vCPU) or all its vCPUs turned off" ;;
        11) echo "the VMM failed" ;;
        2) echo "bad command line" ;;
        *) if [ "$1" -gt 128 ]; then echo "killed by signal $(($1 - 128))"; else echo "unknown status"; fi ;;
    esac
}

# The kernel log since the last call, in /tmp/klog, cleared from the ring
# (dmesg -c): each step's lines alone, and no line lost to a full ring.
# An oops, BUG or WARNING in it ends the run.
klog() {
    dmesg -c >/tmp/klog
    bad=$(grep -E 'Oops|BUG:|WARNING:|Unable to handle kernel|Call trace:|general protection' /tmp/klog)
    [ -z "$bad" ] || fail "the kernel log $1 shows: $(echo "$bad" | head -n 3 | tr '\n' ' ')" 1
}

# After a VM's process ended: the kernel log since the step began has
# exactly one teardown line (`pkvm_rs: VM <id> torn down: ...`, printed
# on the VM's last close), with no reclaim failure and no driver page
# left.
check_teardown() {
    klog "after the $1 run"
    n=$(grep -c 'pkvm_rs: VM .* torn down' /tmp/klog)
    [ "$n" = 1 ] || fail "$1: $n 'pkvm_rs: VM ... torn down' lines in the kernel log, want 1" 1
    line=$(grep 'pkvm_rs: VM .* torn down' /tmp/klog | sed 's/^\[[^]]*\] //')
    case "$line" in
        *" 0 reclaim failures"*"driver pages in use: 0") ;;
        *) fail "$1: the teardown left pages behind: $line" 1 ;;
    esac
    echo "VMM-TEARDOWN-OK: $1: $line"
}

# The payloads come from the vendor boot image: its ramdisk alone has
# /etc/vendor-ramdisk (the boot ramdisk holds this script only), and the
# vendor command line comes first on the kernel's.
[ -e /etc/vendor-ramdisk ] || fail "no /etc/vendor-ramdisk: booted without the vendor boot image (--vendor-boot)" 1
missing=
for f in /lib/modules/pkvm_rs.ko /bin/pkvm-rs-smoke /bin/pkvm-vmm /guest/testguest.bin /guest/params; do
    [ -e "$f" ] || missing="$missing $f"
done
[ -z "$missing" ] || fail "the vendor ramdisk lacks$missing" 1
grep -q pkvm_vendor_cmdline=1 /proc/cmdline || fail "the vendor command line (pkvm_vendor_cmdline=1) is not on the kernel's" 1
echo "VMM-VENDOR-RAMDISK: present ($(cat /etc/vendor-ramdisk)): /lib/modules/pkvm_rs.ko, /bin/pkvm-rs-smoke, /bin/pkvm-vmm, /guest/$(cd /guest && echo * | sed 's/ /, \/guest\//g')"

insmod /lib/modules/pkvm_rs.ko
rc=$?
[ "$rc" = 0 ] || fail "insmod /lib/modules/pkvm_rs.ko" "$rc"
[ -c /dev/pkvm-rs ] || fail "insmod /lib/modules/pkvm_rs.ko: no /dev/pkvm-rs" 1
klog "at boot"
grep -q 'pkvm_rs: el2 host ABI' /tmp/klog || fail "insmod /lib/modules/pkvm_rs.ko: no 'pkvm_rs: el2 host ABI' line" 1
echo "VMM-INSMOD-OK: $(grep 'pkvm_rs: el2 host ABI' /tmp/klog | sed 's/^\[[^]]*\] //')"

pkvm-rs-smoke
rc=$?
[ "$rc" = 0 ] || fail "pkvm-rs-smoke" "$rc"
klog "during the smoke test"
echo "VMM-SMOKE-OK: pkvm-rs-smoke passed every check"

# The guests read nothing from stdin here (/dev/null: the console stays
# as it is, no raw mode). Two vCPUs for the test guest: its CPU_ON checks
# run too (one vCPU skips them), each vCPU a thread of pkvm-vmm.
pkvm-vmm run --cpus 2 --protected-vm /guest/testguest.bin </dev/null
rc=$?
[ "$rc" = 0 ] || fail "pkvm-vmm run --cpus 2 --protected-vm /guest/testguest.bin: $(meaning "$rc")" "$rc"
check_teardown "testguest"
echo "VMM-TESTGUEST-OK: the test guest passed its checks and powered off"

if [ -e /guest/Image ]; then
    params=$(cat /guest/params)
    pkvm-vmm run --mem 256 --initrd /guest/initramfs.cpio --params "$params" \
        --protected-vm /guest/Image </dev/null
    rc=$?
    [ "$rc" = 0 ] || fail "pkvm-vmm run --protected-vm /guest/Image: $(meaning "$rc")" "$rc"
    check_teardown "Linux guest"
    echo "VMM-LINUX-GUEST-OK: the pKVM Linux guest booted, ran its init and powered off"
else
    echo "VMM-LINUX-GUEST-SKIPPED: $(cat /guest/linux-guest-skipped 2>/dev/null || echo 'no /guest/Image in this image')"
fi

# Every VM is gone: nothing holds the module (refcount 0), it unloads,
# and it says it gave every page back.
refs=$(awk '$1 == "pkvm_rs" { print $3 }' /proc/modules)
[ "$refs" = 0 ] || fail "pkvm_rs is still in use before rmmod (refcount '$refs')" 1
rmmod pkvm_rs
rc=$?
[ "$rc" = 0 ] || fail "rmmod pkvm_rs" "$rc"
grep -q '^pkvm_rs ' /proc/modules && fail "rmmod pkvm_rs: the module is still listed" 1
[ -e /dev/pkvm-rs ] && fail "rmmod pkvm_rs: /dev/pkvm-rs is still there" 1
klog "after rmmod"
grep -q 'pkvm_rs: unloaded; driver pages in use: 0' /tmp/klog ||
    fail "rmmod pkvm_rs: no 'pkvm_rs: unloaded; driver pages in use: 0' line" 1
echo "VMM-RMMOD-OK: pkvm_rs unloaded (refcount was 0, driver pages in use: 0), /dev/pkvm-rs gone"

# Each step's part of the kernel log was checked as it was read.
echo "VMM-KERNEL-LOG-CLEAN: no oops, BUG or WARNING in the kernel log"

echo "VMM-ALL-OK"
if [ -n "$shell" ]; then
    insmod /lib/modules/pkvm_rs.ko || fail "insmod /lib/modules/pkvm_rs.ko for the shell" $?
    interactive
fi
echo "VMM-POWEROFF"
poweroff -f
