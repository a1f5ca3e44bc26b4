#!/bin/busybox sh
# /init of the Linux test host built by `cargo qemu linux-images`
# (qemu/src/linux/init.sh). Prints one HOST-* marker line per check; the
# QEMU tests and `cargo qemu bench-boot` read them from the console.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "HOST-USERSPACE-OK: init (pid $$) runs on Linux $(uname -r), image ${pkvm_image:-unknown}"
echo "HOST-CMDLINE: $(cat /proc/cmdline)"

# Both CPUs must run at EL1 (under el2, not at EL2 with a CPU_ON that
# escaped the hypervisor).
if dmesg | grep -q 'CPU: All CPU(s) started at EL1'; then
    echo "HOST-EL1-OK: the kernel says: CPU: All CPU(s) started at EL1"
else
    echo "HOST-CHECK-FAILED: no 'All CPU(s) started at EL1' in the kernel log:"
    dmesg | grep 'started'
fi
echo "HOST-CPUS: $(grep -c ^processor /proc/cpuinfo) online ($(cat /sys/devices/system/cpu/online))"

# Only the vendor boot image's ramdisk has this file.
if [ -e /etc/vendor-ramdisk ]; then
    echo "HOST-VENDOR-RAMDISK: present ($(cat /etc/vendor-ramdisk))"
else
    echo "HOST-VENDOR-RAMDISK: absent"
fi

# Read the hypervisor's memory from user space: el2 reserves it no-map in
# the device tree (so /dev/mem may map it: it is not System RAM) and
# leaves it out of the host's stage-2, so the load must fault at stage 2,
# el2 injects a synchronous external abort and the kernel kills the
# reader with a signal (status above 128) and keeps running.
probed=0
for node in /proc/device-tree/reserved-memory/el2-hypervisor@*; do
    [ -e "$node" ] || continue
    probed=1
    addr=0x${node##*@}
    echo "HOST-PROBE: reading hypervisor memory at $addr through /dev/mem (busybox devmem)"
    out=$(devmem "$addr" 32 2>&1)
    rc=$?
    if [ "$rc" -gt 128 ]; then
        echo "HOST-PROBE-REFUSED: $addr: devmem was killed by signal $((rc - 128)) (exit status $rc)"
    else
        echo "HOST-PROBE-NOT-REFUSED: $addr: devmem exited with status $rc: $out"
    fi
done
if [ "$probed" = 0 ]; then
    echo "HOST-PROBE-SKIPPED: no el2-hypervisor node under /reserved-memory (not running under el2)"
fi
# MSIs through the GICv3 ITS (which el2 mediates): with a virtio PCI
# device on the machine (cargo qemu run --device virtio-rng-pci), load the
# kernel package's virtio-pci and virtio-rng modules, read random bytes
# from the device, and count the interrupts the ITS delivered to it.
if grep -qs 0x1af4 /sys/bus/pci/devices/*/vendor; then
    for m in virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio-rng; do
        insmod /lib/virtio/$m.ko || echo "HOST-MSI-FAILED: insmod $m.ko failed"
    done
    bytes=$(dd if=/dev/hwrng bs=64 count=16 2>/dev/null | wc -c)
    msis=$(awk '/ITS-MSI/ && /virtio/ {
        for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i
    } END { print s + 0 }' /proc/interrupts)
    if [ "$msis" -gt 0 ] && [ "$bytes" -gt 0 ]; then
        echo "HOST-MSI: $msis interrupts from virtio PCI devices through the ITS (ITS-MSI); read $bytes bytes from /dev/hwrng"
    else
        echo "HOST-MSI-FAILED: $msis ITS-MSI interrupts from virtio devices, $bytes bytes from /dev/hwrng:"
        grep -E 'ITS|virtio' /proc/interrupts
    fi
else
    echo "HOST-MSI-SKIPPED: no virtio PCI device on the machine"
fi
echo "HOST-ALIVE: the kernel still runs after the probes ($(cut -d' ' -f1 /proc/uptime) s of uptime)"
echo "HOST-POWEROFF"
poweroff -f
