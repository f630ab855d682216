package initd

import (
	"os"
	"path/filepath"
	"testing"
)

func TestResolveUser(t *testing.T) {
	dir := t.TempDir()
	passwd, group := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"), 0o644)
	os.WriteFile(group, []byte("root:x:0:\nstaff:x:50:\n"), 0o644)
	for _, tc := range []struct {
		spec     string
		uid, gid uint32
		home     string
		bad      bool
	}{
		{spec: "app", uid: 1000, gid: 1001, home: "/home/app"},
		{spec: "1000", uid: 1000, gid: 1001, home: "/home/app"},
		{spec: "app:staff", uid: 1000, gid: 50, home: "/home/app"},
		{spec: "app:7", uid: 1000, gid: 7, home: "/home/app"},
		{spec: "4242", uid: 4242, gid: 4242, home: "/"},
		{spec: "nobody", bad: true},
		{spec: "app:nogroup", bad: true},
	} {
		uid, gid, home, err := resolveUser(passwd, group, tc.spec)
		if tc.bad {
			if err == nil {
				t.Errorf("%s: no error", tc.spec)
			}
			continue
		}
		if err != nil || uid != tc.uid || gid != tc.gid || home != tc.home {
			t.Errorf("%s: %d %d %q %v", tc.spec, uid, gid, home, err)
		}
	}
}
