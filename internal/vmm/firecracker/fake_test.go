package firecracker

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as a fake firecracker and a fake jailer: a wrapper
// script sets envFake and execs it, and TestMain runs the fake instead of
// the tests.
const (
	envFake   = "SMOLVM_FAKE_FC"        // "firecracker", "jailer" or "fail"
	envSpec   = "SMOLVM_FAKE_FC_SPEC"   // the API specification to validate against
	envRecord = "SMOLVM_FAKE_FC_RECORD" // file receiving the API calls (JSON lines)
	envArgs   = "SMOLVM_FAKE_FC_ARGS"   // file receiving the command line (JSON)
	envDelay  = "SMOLVM_FAKE_FC_DELAY"  // wait this long before creating the API socket
	envMsg    = "SMOLVM_FAKE_FC_MSG"    // what "fail" prints on standard error
	envRoot   = "SMOLVM_FAKE_FC_ROOT"   // the jail root (set by the fake jailer)
)

func TestMain(m *testing.M) {
	switch os.Getenv(envFake) {
	case "":
		os.Exit(m.Run())
	case "firecracker":
		os.Exit(fakeFirecracker(os.Args[1:]))
	case "jailer":
		os.Exit(fakeJailer(os.Args[1:]))
	case "fail":
		fmt.Fprintln(os.Stderr, os.Getenv(envMsg))
		os.Exit(1)
	default:
		fmt.Fprintln(os.Stderr, "unknown fake mode", os.Getenv(envFake))
		os.Exit(2)
	}
}

// recordArgs writes args as JSON to the file envArgs names.
func recordArgs(args []string) {
	if p := os.Getenv(envArgs); p != "" {
		b, _ := json.Marshal(args)
		os.WriteFile(p, b, 0o600)
	}
}

// fakeFirecracker serves the validating fake API on --api-sock until it
// receives SendCtrlAltDel (exit 0) or a signal.
func fakeFirecracker(args []string) int {
	recordArgs(args)
	var sock, id string
	for i := 0; i < len(args); i++ {
		k, v, hasV := strings.Cut(args[i], "=")
		if !hasV && i+1 < len(args) && k != "--version" {
			v = args[i+1]
			i++
		}
		switch k {
		case "--version":
			fmt.Println("Firecracker v1.12.0\n\nSupported snapshot versions: v5.0.0")
			return 0
		case "--api-sock":
			sock = v
		case "--id":
			id = v
		case "--start-time-us", "--start-time-cpu-us", "--parent-cpu-time-us":
		default:
			fmt.Fprintf(os.Stderr, "fake firecracker: unknown argument %q\n", args[i])
			return 1
		}
	}
	if sock == "" {
		fmt.Fprintln(os.Stderr, "fake firecracker: no --api-sock")
		return 1
	}
	router, err := loadRouter(os.Getenv(envSpec))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake firecracker:", err)
		return 1
	}
	if d, err := time.ParseDuration(os.Getenv(envDelay)); err == nil {
		time.Sleep(d)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake firecracker:", err)
		return 1
	}
	defer os.Remove(sock)
	fmt.Println("fake firecracker: API listening") // Firecracker logs to stdout until PUT /logger
	vm := newFakeVMM(router, id, os.Getenv(envRoot), os.Stdout, os.Getenv(envRecord))
	defer vm.close()
	srv := &http.Server{Handler: vm}
	go srv.Serve(l)
	select {
	case <-vm.stopped:
	case <-time.After(2 * time.Minute): // never outlive a crashed test run for long
	}
	// Let the answer to SendCtrlAltDel go out, then exit as Firecracker does.
	time.Sleep(20 * time.Millisecond)
	srv.Close()
	return 0
}

// fakeJailer does what the jailer does to paths, without privileges: it
// makes <chroot-base-dir>/<exec file name>/<id>/root and execs the exec file
// with --id, the start time and the arguments after "--", whose --api-sock
// it maps into the root (a real jailer chroots instead).
func fakeJailer(args []string) int {
	recordArgs(args)
	opts := map[string]string{}
	var rest []string
	for i := 0; i < len(args); i++ {
		if args[i] == "--" {
			rest = args[i+1:]
			break
		}
		if i+1 < len(args) {
			opts[args[i]] = args[i+1]
			i++
		}
	}
	exe, id := opts["--exec-file"], opts["--id"]
	if exe == "" || id == "" || opts["--uid"] == "" || opts["--gid"] == "" {
		fmt.Fprintln(os.Stderr, "fake jailer: missing --exec-file, --id, --uid or --gid")
		return 1
	}
	root := filepath.Join(opts["--chroot-base-dir"], filepath.Base(exe), id, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "fake jailer:", err)
		return 1
	}
	argv := []string{exe, "--id=" + id, "--start-time-us=0"}
	for i := 0; i < len(rest); i++ {
		argv = append(argv, rest[i])
		if rest[i] == "--api-sock" && i+1 < len(rest) {
			argv = append(argv, filepath.Join(root, rest[i+1]))
			i++
		}
	}
	env := append(os.Environ(), envRoot+"="+root)
	err := syscall.Exec(exe, argv, env)
	fmt.Fprintln(os.Stderr, "fake jailer: exec:", err)
	return 1
}

// fake writes an executable script dir/name that runs this test binary as a
// fake of the given mode, with env added, and returns its path.
func fake(t *testing.T, dir, name, mode string, env map[string]string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := filepath.Abs(specFile)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("#!/bin/sh\n")
	// A race-enabled binary sleeps a second at exit unless told not to.
	vars := map[string]string{envFake: mode, envSpec: spec, "GORACE": "atexit_sleep_ms=0"}
	for k, v := range env {
		vars[k] = v
	}
	for k, v := range vars {
		fmt.Fprintf(&b, "%s='%s'; export %s\n", k, strings.ReplaceAll(v, "'", `'\''`), k)
	}
	fmt.Fprintf(&b, "exec '%s' \"$@\"\n", exe)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(b.String()), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// readArgs reads a command line a fake recorded.
func readArgs(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("fake recorded no command line: %v", err)
	}
	var a []string
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatal(err)
	}
	return a
}
