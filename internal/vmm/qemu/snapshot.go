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
// exec: command strings), and copies the RAM sparsely from the memfd
// (through /proc/PID/fd) into a memory file. A restored VM maps that file
// with share=off (private, copy-on-write): clones of one snapshot share its
// pages in the page cache until they write them. A VM whose RAM is such a
// private mapping (itself restored) has no shared RAM to copy: its RAM goes
// into the migration stream, and a VM restored from that gets fresh memfd
// RAM again.

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
	if spec.MemFile != "" {
		return fmt.Sprintf("memory-backend-file,id=%s,size=%dM,mem-path=%s,share=off", memBackendID, spec.MemoryMiB, strings.ReplaceAll(spec.MemFile, ",", ",,"))
	}
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
	for {
		var r qmpReply
		if err := q.read(&r); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		if r.Event != "" {
			continue
		}
		if r.Error != nil {
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, r.Error.Class, r.Error.Desc)
		}
		return r.Return, nil
	}
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
			if _, err := snapfile.CopyFrom(ctx, f, st.Size(), opts.MemFile); err != nil {
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
func (b *Backend) Load(ctx context.Context, inst vmm.Instance, state *os.File, format string) error {
	var ignore bool
	switch format {
	case FormatIgnoreShared:
		ignore = true
	case FormatFull:
	default:
		return fmt.Errorf("state format %q is not one this QEMU backend writes", format)
	}
	alive := func() bool { return vmm.Alive(inst.PID, inst.PIDStart) }
	// Wait for the QMP socket.
	for {
		if !alive() {
			return b.exitErr(inst)
		}
		if _, err := os.Stat(inst.Control); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qemu did not open its control socket: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	err := withQMP(ctx, inst.Control, func(q *qmp) error {
		if err := setIgnoreShared(q, ignore); err != nil {
			return err
		}
		if _, err := q.execFD("getfd", map[string]any{"fdname": "smolvm-state"}, int(state.Fd())); err != nil {
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

var _ vmm.Snapshotter = (*Backend)(nil)
