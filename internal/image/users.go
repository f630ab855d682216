package image

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// ensureUser creates the spec's user in the tree unless it is root, a
// number or already listed in /etc/passwd: a passwd, group and (if the
// image has one) shadow entry with a locked password, uid and gid from
// 1000 up, and a home directory it owns. "name:group" creates name only.
func ensureUser(root *os.Root, spec string) error {
	name, _, _ := strings.Cut(spec, ":")
	if name == "" || name == "root" {
		return nil
	}
	if _, err := strconv.Atoi(name); err == nil {
		return nil
	}
	passwd, err := readRootFile(root, "etc/passwd")
	if err != nil {
		return err
	}
	group, err := readRootFile(root, "etc/group")
	if err != nil {
		return err
	}
	uids, users := colonIDs(passwd)
	if users[name] {
		return nil
	}
	gids, groups := colonIDs(group)
	id := 1000
	for uids[id] || gids[id] {
		id++
	}
	home := "/home/" + name
	shell := "/bin/sh"
	if _, err := root.Stat("bin/bash"); err == nil {
		shell = "/bin/bash"
	}
	passwd = appendLine(passwd, fmt.Sprintf("%s:x:%d:%d::%s:%s", name, id, id, home, shell))
	if err := writeInRoot(root, "etc/passwd", passwd, 0o644); err != nil {
		return err
	}
	if !groups[name] {
		group = appendLine(group, fmt.Sprintf("%s:x:%d:", name, id))
		if err := writeInRoot(root, "etc/group", group, 0o644); err != nil {
			return err
		}
	}
	if shadow, err := root.ReadFile("etc/shadow"); err == nil {
		shadow = appendLine(shadow, name+":!:19000:0:99999:7:::")
		if err := writeInRoot(root, "etc/shadow", shadow, 0o640); err != nil {
			return err
		}
	}
	if err := root.MkdirAll(strings.TrimPrefix(home, "/"), 0o755); err != nil {
		return err
	}
	if err := root.Chmod(strings.TrimPrefix(home, "/"), 0o750); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		return root.Lchown(strings.TrimPrefix(home, "/"), id, id)
	}
	return nil
}

// readRootFile reads a file of the tree; a missing one reads as empty.
func readRootFile(root *os.Root, name string) ([]byte, error) {
	b, err := root.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// colonIDs returns the numeric ids (field 2) and names of a passwd-style file.
func colonIDs(data []byte) (map[int]bool, map[string]bool) {
	ids, names := map[int]bool{}, map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 3 {
			continue
		}
		names[f[0]] = true
		if n, err := strconv.Atoi(f[2]); err == nil {
			ids[n] = true
		}
	}
	return ids, names
}

// appendLine appends line and a newline to data, which gets one if it
// lacks it.
func appendLine(data []byte, line string) []byte {
	if len(data) > 0 && data[len(data)-1] != '\n' {
		data = append(data, '\n')
	}
	return append(data, line+"\n"...)
}
