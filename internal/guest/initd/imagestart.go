package initd

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/smolvm-go/smolvm/internal/imagecfg"
)

// startImageCommand starts the user image's start command (imagecfg.File)
// in the background, as the image's user in its workdir with its
// environment; its output goes to the console. It is started once per boot
// and not restarted.
func (in *Init) startImageCommand() error {
	cfg, err := imagecfg.Read(in.path(imagecfg.File))
	if err != nil || cfg.Start == "" {
		return err
	}
	attr := in.procAttr()
	env := append([]string(nil), childEnv...)
	home, dir := "/root", "/"
	if cfg.User != "" {
		uid, gid, h, err := resolveUser(in.path("/etc/passwd"), in.path("/etc/group"), cfg.User)
		if err != nil {
			return fmt.Errorf("start command: %w", err)
		}
		home = h
		if uid != 0 || gid != 0 {
			attr.Sys.Credential = &syscall.Credential{Uid: uid, Gid: gid}
		}
	}
	if fi, err := os.Stat(home); err == nil && fi.IsDir() {
		dir = home
	}
	if cfg.Workdir != "" {
		dir = cfg.Workdir
	}
	attr.Dir = dir
	env = append(env, "HOME="+home)
	for k, v := range cfg.Env {
		env = append(env, k+"="+v)
	}
	attr.Env = env
	pid, ch, err := in.reaper.Start([]string{"/bin/sh", "-c", cfg.Start}, attr)
	if err != nil {
		return fmt.Errorf("start command: %w", err)
	}
	in.logf("start command running (pid %d)", pid)
	go func() {
		ws := <-ch
		in.logf("start command exited: %s", waitString(ws))
	}()
	return nil
}

// resolveUser resolves "user[:group]" (names or numbers) to ids and a home
// directory from the passwd and group files.
func resolveUser(passwd, group, spec string) (uid, gid uint32, home string, err error) {
	u, g, hasGroup := strings.Cut(spec, ":")
	home = "/"
	found := false
	if f := lookupColonFile(passwd, u, 2); f != nil && len(f) >= 6 {
		uid64, err1 := strconv.ParseUint(f[2], 10, 32)
		gid64, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 == nil && err2 == nil {
			uid, gid, home, found = uint32(uid64), uint32(gid64), f[5], true
		}
	}
	if !found {
		n, perr := strconv.ParseUint(u, 10, 32)
		if perr != nil {
			return 0, 0, "", fmt.Errorf("user %q not in %s", u, passwd)
		}
		uid, gid = uint32(n), uint32(n)
	}
	if hasGroup {
		if f := lookupColonFile(group, g, 2); f != nil && len(f) >= 3 {
			n, perr := strconv.ParseUint(f[2], 10, 32)
			if perr == nil {
				return uid, uint32(n), home, nil
			}
		}
		n, perr := strconv.ParseUint(g, 10, 32)
		if perr != nil {
			return 0, 0, "", fmt.Errorf("group %q not in %s", g, group)
		}
		gid = uint32(n)
	}
	return uid, gid, home, nil
}

// lookupColonFile returns the fields of the first line of a passwd-style
// file whose name (field 0) or numeric id (field idField) is key.
func lookupColonFile(file, key string, idField int) []string {
	f, err := os.Open(file)
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Split(sc.Text(), ":")
		if len(fs) > idField && (fs[0] == key || fs[idField] == key) {
			return fs
		}
	}
	return nil
}
