#!/bin/busybox sh
# /init of the pKVM guest initramfs built by `cargo qemu guest-kernel`
# (qemu/src/linux/guest-init.sh). Prints one GUEST-* line per fact the
# guest can see about itself, from the kernel's own log and /sys, then
# powers off (after an interactive shell with `guest.shell`, see the end).
# Nothing here is guessed: what the guest cannot tell, a line says it
# cannot.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

echo "GUEST-USERSPACE-OK: Linux $(uname -r)"

# CPUs: /sys/devices/system/cpu/online is a list such as 0-1 or 0,2-3.
online=$(cat /sys/devices/system/cpu/online)
n=0
for r in $(echo "$online" | tr ',' ' '); do
    case "$r" in
        *-*) n=$((n + ${r#*-} - ${r%-*} + 1)) ;;
        *) n=$((n + 1)) ;;
    esac
done
echo "GUEST-CPUS: $n online ($online)"

# Hypervisor services: drivers/firmware/smccc/kvm_guest.c prints
# "smccc: KVM: hypervisor services detected (a3 a2 a1 a0)" with the
# KVM_FEATURES bitmap once the KVM UID answered (SMCCC >= 1.1 over HVC).
log=$(dmesg)
kvm=$(echo "$log" | grep 'smccc: KVM: hypervisor services detected' | head -n 1)
a0=
if [ -n "$kvm" ]; then
    echo "GUEST-PKVM: $kvm"
    a0=$(echo "$kvm" | sed -n 's/.*detected (0x[0-9a-fA-F]* 0x[0-9a-fA-F]* 0x[0-9a-fA-F]* \(0x[0-9a-fA-F]*\)).*/\1/p')
    if [ -n "$a0" ]; then
        # Bits 2-4: HYP_MEMINFO, MEM_SHARE, MEM_UNSHARE, which
        # pkvm_init_hyp_services() needs before it does anything.
        if [ $(($a0 & 0x1c)) -eq $((0x1c)) ]; then
            echo "GUEST-PKVM-FEATURES: a0=$a0: HYP_MEMINFO, MEM_SHARE and MEM_UNSHARE (bits 2-4) advertised: the pKVM guest driver takes over set_memory_{de,en}crypted if HYP_MEMINFO's granule fits a page (it logs nothing)"
        else
            echo "GUEST-PKVM-FEATURES: a0=$a0: not all of HYP_MEMINFO, MEM_SHARE, MEM_UNSHARE (bits 2-4) advertised: the pKVM guest driver stays inactive"
        fi
    fi
else
    echo "GUEST-PKVM-MISSING: no 'smccc: KVM: hypervisor services detected' in the kernel log; it says: $(echo "$log" | grep -m 1 'SMC Calling Convention' | sed 's/^\[[^]]*\] //')"
fi

# MMIO guard: pkvm_init_hyp_services() (6.12) registers its ioremap hook
# silently when KVM_FEATURES bit 7 (MMIO_GUARD) is set along with bits 2-4
# and HYP_MEMINFO's granule is at most a page; /sys shows nothing of it.
# The bitmap above is all the guest can read.
if [ -n "$a0" ]; then
    if [ $(($a0 & 0x80)) -ne 0 ]; then
        if [ $(($a0 & 0x1c)) -eq $((0x1c)) ]; then
            echo "GUEST-MMIO-GUARD: advertised (KVM_FEATURES bit 7 set in a0=$a0): the pKVM guest driver registers its ioremap hook, reporting each device mapping with MMIO_GUARD, once HYP_MEMINFO's granule fits a page (silently: neither the kernel log nor /sys can confirm it)"
        else
            echo "GUEST-MMIO-GUARD: advertised (bit 7 set in a0=$a0) but unused: the pKVM guest driver needs bits 2-4 too"
        fi
    else
        echo "GUEST-MMIO-GUARD: not advertised (KVM_FEATURES bit 7 clear in a0=$a0): no MMIO_GUARD hypercalls"
    fi
else
    echo "GUEST-MMIO-GUARD: unknown: no KVM_FEATURES bitmap in the kernel log (no hypervisor services discovered) and the 6.12 driver logs nothing, so the guest cannot tell"
fi
echo "$log" | grep -i 'mmio.guard' | while IFS= read -r l; do
    echo "GUEST-MMIO-GUARD-LOG: $l"
done

# Bounce buffers: the default SWIOTLB and any restricted DMA pool from
# /reserved-memory (kernel/dma/swiotlb.c, drivers/of/).
swiotlb=$(echo "$log" | grep -i -E 'software IO TLB|restricted[- ]dma[- ]pool|assigned reserved memory')
if [ -n "$swiotlb" ]; then
    echo "$swiotlb" | while IFS= read -r l; do
        echo "GUEST-SWIOTLB: $l"
    done
else
    echo "GUEST-SWIOTLB: no 'software IO TLB', restricted-dma-pool or 'assigned reserved memory' lines in the kernel log"
fi

# With `guest.shell` on the kernel command line (it stays in /proc/cmdline:
# the kernel takes a dotted word for a module parameter), an interactive
# busybox shell on the console before powering off: `cargo qemu run --guest
# <Image> --guest-initrd <cpio> --guest-append 'console=ttyAMA0 guest.shell'`.
# setsid gives it a session of its own and cttyhack opens the console's
# real tty (ttyAMA0) as its controlling terminal, so job control and Ctrl-C
# work. Leaving it (exit, Ctrl-D) powers off.
shell=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        guest.shell) shell=1 ;;
    esac
done
if [ -n "$shell" ]; then
    echo "GUEST-SHELL: an interactive shell on the console; leave it (exit or Ctrl-D) to power off"
    cd /
    HOME=/ PS1='pkvm-guest# ' setsid cttyhack sh
    echo "GUEST-SHELL-EXIT: the shell exited with status $?"
fi

echo "GUEST-POWEROFF"
poweroff -f
