package pty

import (
	"bytes"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestOpenAndSize(t *testing.T) {
	c, term, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer term.Close()
	if !strings.HasPrefix(term.Name(), "/dev/pts/") {
		t.Fatalf("terminal name %q", term.Name())
	}
	if err := SetSize(c, Size{Rows: 33, Cols: 101}); err != nil {
		t.Fatal(err)
	}
	got, err := GetSize(term)
	if err != nil || got != (Size{Rows: 33, Cols: 101}) {
		t.Fatalf("GetSize = %+v, %v", got, err)
	}
}

// A child on the terminal sees it as its controlling tty, by name.
func TestChildSeesTerminal(t *testing.T) {
	c, term, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cmd := exec.Command("sh", "-c", "tty; stty size")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = term, term, term
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	SetSize(term, Size{Rows: 12, Cols: 34})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	term.Close()
	var out bytes.Buffer
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(&out, c) // ends with EIO once the child has closed the terminal
	cmd.Wait()
	want := term.Name() + "\r\n12 34\r\n"
	if out.String() != want {
		t.Fatalf("output %q, want %q", out.String(), want)
	}
}
