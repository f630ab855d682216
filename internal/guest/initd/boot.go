package initd

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/bootparams"
	"github.com/smolvm-go/smolvm/internal/guest/kmod"
	"github.com/smolvm-go/smolvm/internal/guest/netcfg"
)

// Boot runs the boot steps up to the ready marker. Each step logs its own
// failure and the boot goes on.
func (in *Init) Boot() {
	in.logf("smolvm-agent %s starting", in.opts.Version)
	if !in.opts.DryRun {
		// Make Ctrl-Alt-Del send SIGINT to us instead of rebooting.
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	}
	in.step("mount early filesystems", in.mounts.MountEarly)
	cmdline := in.cmdline()
	in.step("kernel command line", func() (err error) {
		in.params, err = bootparams.Parse(cmdline)
		return err
	})
	nmods := 0
	in.step("load modules", func() (err error) {
		nmods, err = in.loadModules(cmdline)
		return err
	})
	rooted := in.step("mount root", in.mountRoot)
	if rooted {
		// If switching fails half-way we may be left without /proc:
		// continue anyway, the agent can still report.
		in.step("switch root", func() error { return in.mounts.SwitchRoot(newRoot) })
	} else {
		in.logf("staying on the initramfs")
	}
	// The agent server first: it starts (a new process) while the init
	// does the rest, and the marker waits for it.
	in.startServer()
	if in.params.ID != "" {
		in.step("hostname", in.setHostname)
	}
	in.step("network", in.configureNetwork)
	in.step("ssh key", in.installSSHKey)
	in.startServices()
	in.waitServer(serverReadyWait)
	in.logf("booted: modules=%d root=%s hostname=%s network=%s", nmods, in.rootDescription(rooted), in.params.ID, in.networkDescription())
	in.ready()
}

// cmdline returns the kernel command line: Options.Cmdline or /proc/cmdline.
func (in *Init) cmdline() string {
	if in.opts.Cmdline != "" {
		return in.opts.Cmdline
	}
	b, _ := os.ReadFile(in.path("/proc/cmdline"))
	return string(b)
}

// loadModules loads the modules the initramfs lists, in order, and returns
// how many it loaded.
func (in *Init) loadModules(cmdline string) (int, error) {
	l := &kmod.Loader{Root: in.opts.Root, Cmdline: cmdline, DryRun: in.opts.DryRun}
	err := l.LoadOrder()
	in.mounts.Ops = append(in.mounts.Ops, l.Loaded...)
	return len(l.Loaded), err
}

// mountRoot waits for the root device and mounts it on newRoot.
func (in *Init) mountRoot() error {
	dev := in.params.RootDevice()
	if err := in.mounts.WaitDevice(dev, in.opts.RootWait); err != nil {
		return err
	}
	return in.mounts.MountRoot(dev, in.params.RootFSType(), newRoot)
}

// setHostname sets the hostname to the VM's id.
func (in *Init) setHostname() error {
	in.mounts.Ops = append(in.mounts.Ops, "hostname "+in.params.ID)
	if in.opts.DryRun {
		return nil
	}
	return unix.Sethostname([]byte(in.params.ID))
}

// configureNetwork brings up eth0 (or nothing) from the boot parameters.
func (in *Init) configureNetwork() error {
	c := &netcfg.Config{Root: in.opts.Root, DryRun: in.opts.DryRun}
	err := c.Apply(in.params)
	in.mounts.Ops = append(in.mounts.Ops, c.Ops...)
	return err
}

// startServer starts the agent server (and names the virtio-serial ports
// it serves). A dry run starts nothing.
func (in *Init) startServer() {
	if in.opts.DryRun {
		return
	}
	// No udev: name the virtio-serial ports ourselves. The agent server
	// waits for its port, so linking goes on in the background.
	in.LinkVirtioPortsOnce()
	go in.linkVirtioPorts(10 * time.Second)
	if len(in.opts.ServeArgs) > 0 {
		go in.superviseServer()
	}
}

// startServices starts what runs beside the init: sshd when the image has
// it and the image's start command. A dry run starts none.
func (in *Init) startServices() {
	if in.opts.DryRun {
		return
	}
	if _, err := os.Stat(in.path("/usr/sbin/sshd")); err == nil {
		go in.step("sshd", in.startSSHD)
	}
	in.step("image start command", in.startImageCommand)
}

// rootDescription says what the root filesystem is, for the boot summary.
func (in *Init) rootDescription(rooted bool) string {
	if !rooted {
		return "initramfs"
	}
	return in.params.RootDevice() + " (" + in.params.RootFSType() + ")"
}

// networkDescription says what address eth0 has, for the boot summary.
func (in *Init) networkDescription() string {
	if in.params.Addr.IsValid() {
		return in.params.Addr.String()
	}
	return "none"
}

// ready prints the ready marker with the kernel's uptime.
func (in *Init) ready() {
	up := time.Since(in.start).Seconds()
	if b, err := os.ReadFile(in.path("/proc/uptime")); err == nil {
		fmt.Sscanf(string(b), "%f", &up)
	}
	fmt.Fprintf(in.console, "%s uptime=%.2fs\n", bootparams.ReadyMarker, up)
}
