package smolvm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/image"
	"github.com/smolvm-go/smolvm/internal/store"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// Warm templates: the first start of a VM made from an image (no
// snapshot, no --cold, a configuration that does not change the guest's
// devices or boot) restores a "booted" snapshot of that image instead of
// booting it. The snapshot, a warm template, is made on first use by
// booting a private template VM of the same image, memory, vCPUs and
// networking, and is shared by every later VM of that kind.
//
// A template is a snapshot whose name has the reserved form
// warm.<image id>.<key> (a '.' no user snapshot name may contain): hidden
// from Snapshots, unreachable through GetSnapshot, RemoveSnapshot and
// FromSnapshot. Its key is a digest of everything the restored guest
// depends on (templateKey), so a rebuilt image, another kernel, VMM or
// SmolVM version makes a new one; building one removes the stale templates
// of the same image, and removing the image removes its templates.
//
// Layout: warm/<key>.lock serialises the builds of one key across
// processes; warm/<key>.build names the template VM of a build under way,
// so that Cleanup deletes what a killed build left. A template's snapshot
// directory holds warm.json (warmMeta) next to the snapshot's files.

// WarmEnv is the environment variable that turns warm templates off
// ("off") for a Host whose HostOptions.Warm is WarmAuto.
const WarmEnv = "SMOLVM_WARM"

// WarmMode says whether VMs may start from warm templates.
type WarmMode string

// Warm modes.
const (
	// WarmAuto follows $SMOLVM_WARM: on unless it is "off" (or "0", "false").
	WarmAuto WarmMode = ""
	// WarmOn lets a VM's first start restore its image's warm template.
	WarmOn WarmMode = "on"
	// WarmOff boots every VM cold.
	WarmOff WarmMode = "off"
)

// templatePrefix starts every template's snapshot name.
const templatePrefix = "warm."

// warmMetaFile is the template's own description in its snapshot directory.
const warmMetaFile = "warm.json"

// isTemplate reports whether a snapshot name is a warm template's.
func isTemplate(name string) bool { return strings.HasPrefix(name, templatePrefix) }

// warmMeta describes a template beyond its SnapshotInfo.
type warmMeta struct {
	// Image is the image's name; ImageID identifies its build.
	Image   string `json:"image"`
	ImageID string `json:"image_id"`
	// Key is the template's key (templateKey).
	Key string `json:"key"`
	// SSHHostKeys are the types of the SSH host keys the template's guest
	// had (made at its boot): every VM restored from it gets new ones.
	SSHHostKeys []string `json:"ssh_host_keys,omitempty"`
	// BuildMillis is how long the template took to make.
	BuildMillis int64 `json:"build_ms"`
}

// warmEnabled reports whether VMs of this host may start warm.
func (h *Host) warmEnabled() bool {
	switch h.opts.Warm {
	case WarmOn:
		return true
	case WarmOff:
		return false
	}
	switch strings.ToLower(os.Getenv(WarmEnv)) {
	case "off", "0", "false", "no":
		return false
	}
	return true
}

// templateFits reports whether a VM configured with cfg can start from its
// image's template: nothing in it changes the guest's devices, boot or
// disk. (Env vars, egress policy, resolvers, SSH port and limits are
// applied after the restore.)
func templateFits(cfg VMConfig) bool {
	return !cfg.Cold && cfg.FromSnapshot == "" && cfg.Image != "" &&
		cfg.KernelPath == "" && cfg.InitrdPath == "" && cfg.RootfsPath == "" &&
		cfg.BootArgs == "" && len(cfg.Mounts) == 0 &&
		cfg.DiskMode == DiskIsolated && cfg.DiskSizeMiB == 0 &&
		cfg.AttachInterface == "" // an attached VM cannot be restored from a snapshot
}

// imageID identifies a build of img: its manifest (checksums, build time)
// and the identity of its files on disk.
func imageID(img *image.Image) (string, error) {
	d := sha256.New()
	m, err := json.Marshal(img.Manifest)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(d, "%s\n%s\n", img.Name, m)
	for _, p := range []string{img.Kernel, img.Vmlinux, img.Initrd, img.Rootfs} {
		if p == "" {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return "", fmt.Errorf("image %s: %w", img.Name, err)
		}
		fmt.Fprintf(d, "%s %d %d %d.%d %d\n", filepath.Base(p), st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec)
	}
	return hex.EncodeToString(d.Sum(nil))[:12], nil
}

// templateKey is the digest of everything a template's guest depends on:
// the image build, the backend, its version and acceleration, the memory,
// vCPUs, networking, the image's readiness check and SmolVM's version.
func templateKey(imgID string, cfg VMConfig, b boot, kind vmm.Kind, version string, accel vmm.Accel) string {
	d := sha256.New()
	fmt.Fprintf(d, "image %s\nbackend %s\nvmm %s\naccel %s\nmem %d\nvcpus %d\nnetwork %v\nready %q\nsmolvm %s\n",
		imgID, kind, version, accel, cfg.MemSizeMiB, cfg.VCPUCount, !cfg.NoNetwork, b.Ready, GetVersion())
	return hex.EncodeToString(d.Sum(nil))[:16]
}

// warmStart is what warmUp changed, for undoing it.
type warmStart struct {
	template string
	rootfs   string // the image's disk, to go back to a cold boot
}

// progress reports a stage of long work in a call on the VM: to the
// function given to Create, else the host's, else a terminal on stderr.
func (vm *VM) progress(stage string) {
	f := vm.progressFn
	if f == nil {
		f = vm.h.opts.Progress
	}
	if f == nil && isTerminal(os.Stderr) {
		f = ProgressWriter(os.Stderr)
	}
	if f != nil {
		f(stage, 0, 0)
	}
}

// startLocked runs a Start's steps, under the VM's lock. A first start
// that fits a warm template restores it (made now if missing); if that
// fails, the VM boots cold instead.
func (vm *VM) startLocked(ctx context.Context) error {
	w := vm.warmUp(ctx)
	err := vm.runStart(ctx)
	if err == nil || w == nil || ctx.Err() != nil {
		return err
	}
	vm.progress(fmt.Sprintf("warm start from template %s failed (%v); booting cold", w.template, firstLine(err)))
	vm.h.dropTemplate(context.WithoutCancel(ctx), w.template)
	if uerr := vm.unwarm(ctx, w); uerr != nil {
		return errors.Join(err, uerr)
	}
	return vm.runStart(ctx)
}

// runStart runs the start table for the VM's record once.
func (vm *VM) runStart(ctx context.Context) error {
	bootCtx, cancel := context.WithTimeout(ctx, vm.h.opts.BootTimeout)
	defer cancel()
	s := &startOp{vm: vm, bootCtx: bootCtx}
	return runSteps(ctx, vm.h, vm.startTable(ctx), s, ErrBackend)
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// warmUp turns the first start of a VM that fits a template into a restore
// of it: the template (built if missing) gives the VM's disk and memory.
// It returns nil, changing nothing, when the VM boots cold.
func (vm *VM) warmUp(ctx context.Context) *warmStart {
	h := vm.h
	if !h.warmEnabled() {
		return nil
	}
	row, rec, err := vm.load(ctx)
	if err != nil || rec.Restore != nil || row.Status != string(StateCreated) || row.Op != store.OpNone || !templateFits(rec.Config) {
		return nil
	}
	be, err := h.chooseBackend(ctx, rec.Config, rec.Boot)
	if err != nil {
		return nil
	}
	if _, ok := be.(vmm.Snapshotter); !ok {
		return nil
	}
	img, err := image.Get(h.imageDir, rec.Config.Image)
	if err != nil || img.Kernel != rec.Boot.Kernel || img.Initrd != rec.Boot.Initrd {
		return nil // the image changed since the VM was made: its disk is of the old one
	}
	info, err := h.template(ctx, vm, rec, img, be)
	if err != nil {
		vm.progress(fmt.Sprintf("warm template for image %s: %v; booting cold", rec.Config.Image, firstLine(err)))
		return nil
	}
	if err := h.checkRestorable(ctx, info, rec.Config); err != nil {
		return nil
	}
	// The VM's disk becomes the template's, as it was at the snapshot.
	tmp := rec.Boot.Disk + ".warm"
	os.Remove(tmp)
	if err := image.CloneDisk(ctx, filepath.Join(info.Path, snapDisk), tmp, 0); err != nil {
		os.Remove(tmp)
		return nil
	}
	if err := os.Rename(tmp, rec.Boot.Disk); err != nil {
		os.Remove(tmp)
		return nil
	}
	w := &warmStart{template: info.Name, rootfs: img.Rootfs}
	if err := h.updateRecord(ctx, vm.id, func(r *record) error {
		r.Boot.Kernel, r.Boot.Initrd = info.Kernel, info.Initrd
		r.Restore = &pendingRestore{Snapshot: info.Name, Dir: info.Path, Format: info.Format, Files: info.Files,
			Backend: info.Backend, VMMVersion: info.VMMVersion, Accel: info.Accel}
		r.Template = info.Name
		return nil
	}); err != nil {
		vm.unwarm(ctx, w)
		return nil
	}
	return w
}

// unwarm gives a VM that warmUp prepared its image's disk back and makes
// its next start a cold boot.
func (vm *VM) unwarm(ctx context.Context, w *warmStart) error {
	ctx = context.WithoutCancel(ctx)
	disk := vm.h.diskPath(vm.id)
	tmp := disk + ".cold"
	os.Remove(tmp)
	if err := image.CloneDisk(ctx, w.rootfs, tmp, 0); err != nil {
		os.Remove(tmp)
		return wrapErr("start", vm.id, ErrImage, fmt.Errorf("cold disk after a failed warm start: %w", err))
	}
	if err := os.Rename(tmp, disk); err != nil {
		os.Remove(tmp)
		return wrapErr("start", vm.id, ErrBackend, err)
	}
	return vm.h.updateRecord(ctx, vm.id, func(r *record) error {
		r.Restore, r.Template = nil, ""
		return nil
	})
}

// template returns the template a VM with rec, booting img on be, starts
// from, building it if there is none.
func (h *Host) template(ctx context.Context, vm *VM, rec record, img *image.Image, be vmm.Backend) (SnapshotInfo, error) {
	version, err := be.Version(ctx)
	if err != nil {
		return SnapshotInfo{}, err
	}
	imgID, err := imageID(img)
	if err != nil {
		return SnapshotInfo{}, err
	}
	accel, _ := h.opts.probe.Resolve(vmm.Accel(rec.Config.Accel))
	key := templateKey(imgID, rec.Config, rec.Boot, be.Kind(), version, accel)
	name := templatePrefix + imgID + "." + key
	if info, err := h.templateInfo(ctx, name); err == nil {
		return info, nil
	}
	dir := filepath.Join(h.dir, "warm")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return SnapshotInfo{}, err
	}
	unlock, err := flockWait(ctx, filepath.Join(dir, key+".lock"))
	if err != nil {
		return SnapshotInfo{}, err
	}
	defer unlock()
	if info, err := h.templateInfo(ctx, name); err == nil {
		return info, nil // built by another process meanwhile
	}
	h.dropTemplate(ctx, name) // a broken one
	vm.progress(fmt.Sprintf("building warm template for image %s (first use)", rec.Config.Image))
	cfg := VMConfig{Image: rec.Config.Image, MemSizeMiB: rec.Config.MemSizeMiB, VCPUCount: rec.Config.VCPUCount,
		NoNetwork: rec.Config.NoNetwork, Accel: rec.Config.Accel, Backend: BackendKind(be.Kind()), Cold: true}
	info, err := h.buildTemplate(ctx, dir, name, warmMeta{Image: rec.Config.Image, ImageID: imgID, Key: key}, cfg, vm.progressFn)
	if err != nil {
		return SnapshotInfo{}, err
	}
	h.dropStaleTemplates(ctx, rec.Config.Image, imgID)
	return info, nil
}

// buildTemplate boots a private VM configured by cfg, takes the template
// name of it and deletes the VM. The caller holds the key's lock.
func (h *Host) buildTemplate(ctx context.Context, dir, name string, meta warmMeta, cfg VMConfig, progress func(string, int64, int64)) (_ SnapshotInfo, retErr error) {
	t0 := time.Now()
	cfg.VMID = "warm-" + randHex(4)
	// The marker names the template VM until it is gone: Cleanup deletes
	// the VM of a build whose lock is free.
	marker := filepath.Join(dir, meta.Key+".build")
	if err := os.WriteFile(marker, []byte(cfg.VMID), 0o600); err != nil {
		return SnapshotInfo{}, err
	}
	vm, err := h.create(ctx, cfg, callOptions{progress: progress})
	if err != nil {
		os.Remove(marker)
		return SnapshotInfo{}, err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if err := vm.ForceDelete(dctx); err == nil {
			os.Remove(marker)
		}
	}()
	if err := vm.Start(ctx); err != nil {
		return SnapshotInfo{}, err
	}
	// An image with sshd makes its host keys and starts sshd after the
	// ready marker: the snapshot waits for sshd to listen, so that no
	// restored guest makes keys half-way. Keys made at boot would be
	// every clone's: they are made again after each restore (hostKeysStep).
	r, err := vm.Run(ctx, `[ -x /usr/sbin/sshd ] && echo sshd || true`)
	if err != nil {
		return SnapshotInfo{}, err
	}
	if r.Output() == "sshd" {
		wctx, cancel := context.WithTimeout(ctx, h.opts.BootTimeout)
		err := vm.WaitPort(wctx, 22)
		cancel()
		if err != nil {
			return SnapshotInfo{}, fmt.Errorf("sshd of the template VM: %w", err)
		}
	}
	r, err = vm.Run(ctx, `for k in /etc/ssh/ssh_host_*_key; do [ -e "$k" ] && echo "$k"; done`)
	if err != nil {
		return SnapshotInfo{}, err
	}
	for _, k := range strings.Fields(r.Stdout) {
		typ := strings.TrimSuffix(strings.TrimPrefix(k, "/etc/ssh/ssh_host_"), "_key")
		if _, ok := hostKeyTypes[typ]; ok {
			meta.SSHHostKeys = append(meta.SSHHostKeys, typ)
		}
	}
	unlock, err := h.lockVM(ctx, vm.id)
	if err != nil {
		return SnapshotInfo{}, err
	}
	info, err := vm.snapshotLocked(ctx, name)
	unlock()
	if err != nil {
		return SnapshotInfo{}, err
	}
	defer func() {
		if retErr != nil {
			h.dropTemplate(context.WithoutCancel(ctx), name)
		}
	}()
	meta.BuildMillis = time.Since(t0).Milliseconds()
	b, _ := json.MarshalIndent(meta, "", "  ")
	if err := os.WriteFile(filepath.Join(info.Path, warmMetaFile), b, 0o600); err != nil {
		return SnapshotInfo{}, err
	}
	return info, nil
}

// templateInfo returns the template name if it is recorded, complete and
// its files are there.
func (h *Host) templateInfo(ctx context.Context, name string) (SnapshotInfo, error) {
	r, err := h.st.GetSnapshot(ctx, name)
	if err != nil {
		return SnapshotInfo{}, err
	}
	info, err := snapshotInfoOf(r)
	if err != nil {
		return SnapshotInfo{}, err
	}
	if _, err := readWarmMeta(info.Path); err != nil {
		return SnapshotInfo{}, err
	}
	return info, nil
}

func readWarmMeta(dir string) (warmMeta, error) {
	var m warmMeta
	b, err := os.ReadFile(filepath.Join(dir, warmMetaFile))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%s: %w", warmMetaFile, err)
	}
	return m, nil
}

// dropTemplate removes the template name (record and files), if any. VMs
// restored from it keep running: their memory maps hold its pages.
func (h *Host) dropTemplate(ctx context.Context, name string) {
	if !isTemplate(name) {
		return
	}
	h.st.DeleteSnapshot(ctx, name)
	os.RemoveAll(h.snapPath(name))
}

// templates returns the recorded templates; with image set, only that
// image's.
func (h *Host) templates(ctx context.Context, img string) ([]SnapshotInfo, error) {
	rows, err := h.st.Snapshots(ctx, "")
	if err != nil {
		return nil, err
	}
	var out []SnapshotInfo
	for _, r := range rows {
		if !isTemplate(r.ID) {
			continue
		}
		info, err := snapshotInfoOf(r)
		if err != nil || (img != "" && info.Image != img) {
			continue
		}
		out = append(out, info)
	}
	return out, nil
}

// dropStaleTemplates removes the templates of image img made from another
// build of it than imgID.
func (h *Host) dropStaleTemplates(ctx context.Context, img, imgID string) {
	tpls, _ := h.templates(ctx, img)
	for _, t := range tpls {
		if !strings.HasPrefix(t.Name, templatePrefix+imgID+".") {
			h.dropTemplate(ctx, t.Name)
		}
	}
}

// dropImageTemplates removes every template of image img (the image is
// being removed).
func (h *Host) dropImageTemplates(ctx context.Context, img string) {
	tpls, _ := h.templates(ctx, img)
	for _, t := range tpls {
		h.dropTemplate(ctx, t.Name)
	}
}

// Templates lists the warm templates (hidden from Snapshots), oldest first.
func (h *Host) Templates(ctx context.Context) ([]SnapshotInfo, error) {
	out, err := h.templates(ctx, "")
	if err != nil {
		return nil, wrapErr("templates", "", ErrBackend, err)
	}
	if out == nil {
		out = []SnapshotInfo{}
	}
	return out, nil
}

// pruneTemplates removes the templates of images that are gone or were
// built again since; it returns their names.
func (h *Host) pruneTemplates(ctx context.Context) []string {
	tpls, _ := h.templates(ctx, "")
	var out []string
	for _, t := range tpls {
		img, err := image.Get(h.imageDir, t.Image)
		if err == nil {
			if id, err := imageID(img); err != nil || strings.HasPrefix(t.Name, templatePrefix+id+".") {
				continue
			}
		}
		h.dropTemplate(ctx, t.Name)
		out = append(out, t.Name)
	}
	return out
}

// warmSteps start a VM from a template: a restore, then its own SSH host
// keys.
var warmSteps = func() []step[*startOp] {
	var out []step[*startOp]
	for _, s := range restoreSteps {
		out = append(out, s)
		if s.name == "guest-restore" {
			out = append(out, hostKeysStep)
		}
	}
	return out
}()

// warm is Cleanup's stage for templates: it deletes the template VM of a
// build that was killed (its key's lock is free) and the half-made
// template, and templates whose image is gone.
func (c *cleaner) warm(ctx context.Context) error {
	h := c.h
	dir := filepath.Join(h.dir, "warm")
	markers, _ := filepath.Glob(filepath.Join(dir, "*.build"))
	for _, m := range markers {
		key := strings.TrimSuffix(filepath.Base(m), ".build")
		unlock, err := flockTry(filepath.Join(dir, key+".lock"))
		if err != nil {
			continue // a build in progress
		}
		b, _ := os.ReadFile(m)
		id := strings.TrimSpace(string(b))
		c.note("interrupted warm template build " + key)
		if !c.co.DryRun {
			if ValidateVMID(id) == nil {
				if _, err := h.st.GetVM(ctx, id); err == nil {
					vm := &VM{h: h, id: id}
					if err := vm.ForceDelete(ctx); err != nil && !errors.Is(err, ErrNotFound) {
						c.errs = append(c.errs, err)
					}
				}
				tmps, _ := filepath.Glob(filepath.Join(h.snapDir(), ".tmp-"+id+".*"))
				for _, t := range tmps {
					os.RemoveAll(t)
				}
			}
			os.Remove(m)
		}
		unlock()
	}
	tpls, err := h.templates(ctx, "")
	if err != nil {
		return err
	}
	for _, t := range tpls {
		if _, err := readWarmMeta(t.Path); err != nil {
			// Recorded, never finished: a build killed after its
			// snapshot (the build's lock says whether it still runs).
			key := t.Name[strings.LastIndexByte(t.Name, '.')+1:]
			if unlock, err := flockTry(filepath.Join(dir, key+".lock")); err == nil {
				c.note("warm template " + t.Name + " (unfinished)")
				if !c.co.DryRun {
					h.dropTemplate(ctx, t.Name)
				}
				unlock()
			}
			continue
		}
		if _, err := image.Get(h.imageDir, t.Image); err == nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(h.imageDir, t.Image)); err == nil {
			continue // there but not readable as an image now: leave it
		}
		c.note("warm template " + t.Name + " (image " + t.Image + " gone)")
		if !c.co.DryRun {
			h.dropTemplate(ctx, t.Name)
		}
	}
	return nil
}
