package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm-go/smolvm/internal/snapfile"
	"github.com/smolvm-go/smolvm/internal/vmm"
)

// Snapshots with QEMU 7.2 (no file: migration URI, no mapped-ram):
//
// Every VM's RAM is a memory-backend-memfd with share=on, which QEMU makes
// and which goes away with it (nothing to clean up after a crash). Save
// stops the vCPUs, enables x-ignore-shared so the migration stream holds
// only device state, migrates to a file passed to QEMU over QMP (getfd, no
// exec: command strings), and copies the non-zero pages of the RAM from
// the memfd (through /proc/PID/fd) into a sparse memory file. Load starts
// from a fresh memfd: it writes the memory file's pages into it, then
// loads the device state with x-ignore-shared.
//
// Why not map the memory file privately (share=off) so that clones share
// its pages, as VM templating does? QEMU 7.2 discards guest RAM in a file
// backend by punching holes into the file even when the mapping is
// private (ram_block_discard_range), and the guest drives discards
// (virtio-balloon inflation and free page reporting): one hostile clone
// could zero pages of every other clone of the same snapshot and of the
// snapshot itself. Each restored VM therefore owns its RAM.

// memBackendID is the id of the guest RAM's memory backend.
const memBackendID = "mem0"

// State formats Save writes.
const (
	// FormatIgnoreShared is a migration stream without RAM (it is in the
	// memory file).
	FormatIgnoreShared = "qemu-migration+ignore-shared"
	// FormatFull is a migration stream with RAM.
	FormatFull = "qemu-migration"
)

// memBackend returns the -object option of the guest RAM.
func memBackend(spec vmm.Spec) string {
	return fmt.Sprintf("memory-backend-memfd,id=%s,size=%dM,share=on", memBackendID, spec.MemoryMiB)
}

// memfdPath returns /proc/PID/fd/N of the QEMU process's RAM memfd, or ""
// when its RAM is not in one.
func memfdPath(pid int) string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return ""
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if t, err := os.Readlink(p); err == nil && strings.HasPrefix(t, "/memfd:memory-backend-memfd") {
			return p
		}
	}
	return ""
}

// execFD runs a command with fd passed alongside it (SCM_RIGHTS), as
// getfd wants.
func (q *qmp) execFD(cmd string, args any, fd int) (json.RawMessage, error) {
	uc, ok := q.c.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("qmp %s: not a unix socket", cmd)
	}
	req := map[string]any{"execute": cmd, "arguments": args}
	b, _ := json.Marshal(req)
	if _, _, err := uc.WriteMsgUnix(append(b, '\n'), unix.UnixRights(fd), nil); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	return q.reply(cmd)
}

func setIgnoreShared(q *qmp, on bool) error {
	_, err := q.exec("migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": on}},
	})
	return err
}

// waitMigration polls query-migrate until the migration completed or
// failed.
func waitMigration(ctx context.Context, q *qmp, alive func() bool) error {
	for {
		raw, err := q.exec("query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return fmt.Errorf("query-migrate: %w", err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		if !alive() {
			return vmm.ErrNotRunning
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration did not finish: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Save implements vmm.Snapshotter.
func (b *Backend) Save(ctx context.Context, inst vmm.Instance, opts vmm.SaveOptions) (vmm.SaveResult, error) {
	if !vmm.Alive(inst.PID, inst.PIDStart) {
		return vmm.SaveResult{}, vmm.ErrNotRunning
	}
	var res vmm.SaveResult
	err := withQMP(ctx, inst.Control, func(q *qmp) error {
		if _, err := q.exec("stop", nil); err != nil {
			return err
		}
		mem := ""
		if opts.MemFile != "" {
			mem = memfdPath(inst.PID)
		}
		res.MemFile = mem != ""
		res.Format = FormatFull
		if res.MemFile {
			res.Format = FormatIgnoreShared
		}
		if err := setIgnoreShared(q, res.MemFile); err != nil {
			return err
		}
		if _, err := q.execFD("getfd", map[string]any{"fdname": "smolvm-state"}, int(opts.State.Fd())); err != nil {
			return err
		}
		if _, err := q.exec("migrate", map[string]any{"uri": "fd:smolvm-state"}); err != nil {
			return err
		}
		alive := func() bool { return vmm.Alive(inst.PID, inst.PIDStart) }
		if err := waitMigration(ctx, q, alive); err != nil {
			return fmt.Errorf("save state: %w", err)
		}
		if res.MemFile {
			f, err := os.Open(mem)
			if err != nil {
				return fmt.Errorf("open guest RAM: %w", err)
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return err
			}
			if err := snapfile.CopySparse(ctx, f, st.Size(), opts.MemFile); err != nil {
				return fmt.Errorf("copy guest RAM: %w", err)
			}
		}
		if opts.Between != nil {
			return opts.Between(ctx)
		}
		return nil
	})
	return res, err
}

// Load implements vmm.Snapshotter.
func (b *Backend) Load(ctx context.Context, inst vmm.Instance, opts vmm.LoadOptions) error {
	var ignore bool
	switch opts.Format {
	case FormatIgnoreShared:
		ignore = true
		if opts.MemFile == "" {
			return fmt.Errorf("state format %s needs its memory file", opts.Format)
		}
	case FormatFull:
	default:
		return fmt.Errorf("state format %q is not one this QEMU backend writes", opts.Format)
	}
	alive := func() bool { return vmm.Alive(inst.PID, inst.PIDStart) }
	// QEMU makes its RAM after its monitor socket: a QMP command is
	// answered once the machine is made.
	for {
		if !alive() {
			return b.exitErr(inst)
		}
		err := withQMP(ctx, inst.Control, func(q *qmp) error { _, err := q.exec("query-status", nil); return err })
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qemu did not answer on its control socket: %w (%v)", ctx.Err(), err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	if ignore {
		if err := fillRAM(ctx, inst.PID, opts.MemFile); err != nil {
			return fmt.Errorf("load memory: %w", err)
		}
	}
	err := withQMP(ctx, inst.Control, func(q *qmp) error {
		if err := setIgnoreShared(q, ignore); err != nil {
			return err
		}
		if _, err := q.execFD("getfd", map[string]any{"fdname": "smolvm-state"}, int(opts.State.Fd())); err != nil {
			return err
		}
		if _, err := q.exec("migrate-incoming", map[string]any{"uri": "fd:smolvm-state"}); err != nil {
			return err
		}
		return waitMigration(ctx, q, alive)
	})
	if err != nil && !alive() {
		// QEMU exits when an incoming migration fails; its reason is in
		// its standard error.
		return fmt.Errorf("load state: %w", b.exitErr(inst))
	}
	if err != nil {
		return fmt.Errorf("load state: %w", err)
	}
	return nil
}

// fillRAM writes the non-zero pages of the memory file mem into the fresh
// (all-zero) RAM memfd of QEMU process pid; their sizes must match.
func fillRAM(ctx context.Context, pid int, mem string) error {
	p := memfdPath(pid)
	if p == "" {
		return fmt.Errorf("qemu process %d has no RAM memfd", pid)
	}
	dst, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer dst.Close()
	src, err := os.Open(mem)
	if err != nil {
		return err
	}
	defer src.Close()
	ds, err := dst.Stat()
	if err != nil {
		return err
	}
	ss, err := src.Stat()
	if err != nil {
		return err
	}
	if ds.Size() != ss.Size() {
		return fmt.Errorf("memory file is %d bytes, the VM has %d", ss.Size(), ds.Size())
	}
	return snapfile.WriteInto(ctx, dst, src, ss.Size())
}

var _ vmm.Snapshotter = (*Backend)(nil)
