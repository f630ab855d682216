package smolvm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseMount(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Mount
		bad  string // part of the error; "" means valid
	}{
		{in: "/srv/a:/mnt/a", want: Mount{HostPath: "/srv/a", GuestPath: "/mnt/a"}},
		{in: "/srv/a:/mnt/a:ro", want: Mount{HostPath: "/srv/a", GuestPath: "/mnt/a", ReadOnly: true}},
		{in: "/srv/a:/mnt/a:rw", want: Mount{HostPath: "/srv/a", GuestPath: "/mnt/a"}},
		{in: "/srv/a", bad: "HOST_DIR:GUEST_DIR"},
		{in: "/srv/a:/mnt/a:rx", bad: "HOST_DIR:GUEST_DIR"},
		{in: "srv:/mnt/a", bad: "absolute"},
		{in: "/srv:mnt", bad: "absolute"},
		{in: "/srv,x:/mnt", bad: "','"},
		{in: "/srv:/", bad: "guest path"},
		{in: "/srv:/proc/x", bad: "guest path"},
		{in: "/srv:/sys", bad: "guest path"},
	} {
		m, err := ParseMount(c.in)
		if c.bad == "" {
			if err != nil || m != c.want {
				t.Errorf("%q: %+v %v", c.in, m, err)
			}
			continue
		}
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != "mounts" || !strings.Contains(err.Error(), c.bad) {
			t.Errorf("%q: want a mounts error with %q, got %v", c.in, c.bad, err)
		}
	}
}

func TestValidateMounts(t *testing.T) {
	dup := []Mount{{HostPath: "/a", GuestPath: "/m"}, {HostPath: "/b", GuestPath: "/m/"}}
	if err := (VMConfig{Mounts: dup}).Validate(); err == nil || !strings.Contains(err.Error(), "same guest path") {
		t.Fatalf("duplicate guest path: %v", err)
	}
	many := make([]Mount, MaxMounts+1)
	for i := range many {
		many[i] = Mount{HostPath: "/a", GuestPath: "/m" + string(rune('a'+i))}
	}
	if err := (VMConfig{Mounts: many}).Validate(); err == nil {
		t.Fatal("too many mounts accepted")
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	os.WriteFile(file, nil, 0o644)
	if err := checkMountSources([]Mount{{HostPath: dir, GuestPath: "/m"}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(dir, "missing"), file} {
		err := checkMountSources([]Mount{{HostPath: p, GuestPath: "/m"}})
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v", p, err)
		}
	}
}

func TestValidateGuestPath(t *testing.T) {
	for _, p := range []string{"", "rel", "./x", "/a\x00b", "/" + strings.Repeat("a", 5000)} {
		if err := validateGuestPath("path", p); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%q accepted", p)
		}
	}
	for _, p := range []string{"/", "/root/with space", "/ünï/new\nline"} {
		if err := validateGuestPath("path", p); err != nil {
			t.Errorf("%q: %v", p, err)
		}
	}
}
