package server

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

// account is a user resolved from the passwd file.
type account struct {
	name     string
	uid, gid uint32
	home     string
	shell    string
}

// lookupUser resolves spec, a user name or a numeric uid, in passwdFile. A
// numeric uid without an entry resolves to uid=gid=spec with home "/".
func lookupUser(passwdFile, spec string) (account, error) {
	data, err := os.ReadFile(passwdFile)
	if err != nil && !os.IsNotExist(err) {
		return account{}, fmt.Errorf("read %s: %w", passwdFile, err)
	}
	uid, numErr := strconv.ParseUint(spec, 10, 32)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		a, ok := parsePasswdLine(sc.Text())
		if !ok {
			continue
		}
		if a.name == spec || (numErr == nil && uint64(a.uid) == uid) {
			return a, nil
		}
	}
	if numErr == nil {
		return account{name: spec, uid: uint32(uid), gid: uint32(uid), home: "/"}, nil
	}
	return account{}, fmt.Errorf("%w: user %q", proto.ErrNotFound, spec)
}

// parsePasswdLine parses "name:x:uid:gid:gecos:home:shell".
func parsePasswdLine(line string) (account, bool) {
	if line == "" || strings.HasPrefix(line, "#") {
		return account{}, false
	}
	f := strings.Split(line, ":")
	if len(f) < 7 {
		return account{}, false
	}
	uid, err1 := strconv.ParseUint(f[2], 10, 32)
	gid, err2 := strconv.ParseUint(f[3], 10, 32)
	if err1 != nil || err2 != nil {
		return account{}, false
	}
	return account{name: f[0], uid: uint32(uid), gid: uint32(gid), home: f[5], shell: f[6]}, true
}

// groupsOf returns the gids of the groups in groupFile that list user as a
// member, plus primary. A missing file yields just primary.
func groupsOf(groupFile, user string, primary uint32) []uint32 {
	gids := []uint32{primary}
	data, err := os.ReadFile(groupFile)
	if err != nil {
		return gids
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 4 || strings.HasPrefix(f[0], "#") {
			continue
		}
		gid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil || uint32(gid) == primary {
			continue
		}
		for _, m := range strings.Split(f[3], ",") {
			if m == user {
				gids = append(gids, uint32(gid))
				break
			}
		}
	}
	return gids
}
