package server

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
)

func TestLookupUser(t *testing.T) {
	dir := t.TempDir()
	passwd := filepath.Join(dir, "passwd")
	group := filepath.Join(dir, "group")
	os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/bash\n# comment\nbroken line\nalice:x:1000:1000:Alice,,,:/home/alice:/bin/sh\nbob:x:1001:100::/home/bob:/bin/false\n"), 0o644)
	os.WriteFile(group, []byte("root:x:0:\nusers:x:100:alice\nwheel:x:10:bob,alice\nalice:x:1000:\n"), 0o644)
	tests := []struct {
		spec string
		want account
		kind error
	}{
		{spec: "root", want: account{name: "root", uid: 0, gid: 0, home: "/root", shell: "/bin/bash"}},
		{spec: "alice", want: account{name: "alice", uid: 1000, gid: 1000, home: "/home/alice", shell: "/bin/sh"}},
		{spec: "1001", want: account{name: "bob", uid: 1001, gid: 100, home: "/home/bob", shell: "/bin/false"}},
		{spec: "4242", want: account{name: "4242", uid: 4242, gid: 4242, home: "/"}},
		{spec: "mallory", kind: proto.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			got, err := lookupUser(passwd, tt.spec)
			if tt.kind != nil {
				if !errors.Is(err, tt.kind) {
					t.Fatalf("err = %v, want %v", err, tt.kind)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("lookupUser = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
	if got := groupsOf(group, "alice", 1000); !slices.Equal(got, []uint32{1000, 100, 10}) {
		t.Errorf("groupsOf(alice) = %v", got)
	}
	if got := groupsOf(filepath.Join(dir, "none"), "alice", 7); !slices.Equal(got, []uint32{7}) {
		t.Errorf("groupsOf without file = %v", got)
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "tool")
	os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "data"), nil, 0o644)
	if got, err := lookPath("tool", "/nonexistent:"+dir); err != nil || got != exe {
		t.Errorf("lookPath(tool) = %q, %v", got, err)
	}
	if _, err := lookPath("data", dir); !errors.Is(err, proto.ErrNotFound) {
		t.Errorf("non-executable: err = %v", err)
	}
	if got, _ := lookPath("./x/y", ""); got != "./x/y" {
		t.Errorf("path with slash = %q", got)
	}
}
