// Package pty opens pseudo-terminals with plain Linux system calls (no
// cgo, no package net), for the guest agent's terminal sessions.
//
// Open returns the controller ("master") side, opened non-blocking so the
// Go runtime poller serves it and read deadlines work, and the terminal
// ("slave") side to hand to a child as its stdin, stdout and stderr. Start
// the child with SysProcAttr{Setsid: true, Setctty: true, Ctty: 0} so the
// terminal becomes the controlling terminal of its new session: then the
// line discipline turns byte 0x03 written to the controller into SIGINT for
// the foreground process group.
package pty

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// DefaultPtmx is the multiplexer device Open uses.
const DefaultPtmx = "/dev/ptmx"

// Open allocates a new pseudo-terminal and returns its controller side and
// its terminal side (whose Name is /dev/pts/N). The caller closes both; the
// terminal side usually right after starting the child.
func Open() (controller, terminal *os.File, err error) {
	fd, err := unix.Open(DefaultPtmx, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("pty: open %s: %w", DefaultPtmx, err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("pty: unlock: %w", err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("pty: number: %w", err)
	}
	name := "/dev/pts/" + strconv.FormatUint(uint64(n), 10)
	controller = os.NewFile(uintptr(fd), DefaultPtmx)
	// TIOCGPTPEER opens the terminal side without a path lookup, so a
	// hostile /dev/pts cannot substitute another file; fall back to the
	// path on kernels before 4.13.
	tfd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno != 0 {
		t, err := unix.Open(name, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			controller.Close()
			return nil, nil, fmt.Errorf("pty: open %s: %w", name, err)
		}
		tfd = uintptr(t)
	}
	return controller, os.NewFile(tfd, name), nil
}

// Size is a terminal's window size in characters.
type Size struct {
	// Rows is the number of lines.
	Rows uint16
	// Cols is the number of columns.
	Cols uint16
}

// SetSize sets the window size of the terminal behind f (either side); the
// kernel sends SIGWINCH to the terminal's foreground process group.
func SetSize(f *os.File, s Size) error {
	conn, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("pty: set size: %w", err)
	}
	var ierr error
	err = conn.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: s.Rows, Col: s.Cols})
	})
	if err == nil {
		err = ierr
	}
	if err != nil {
		return fmt.Errorf("pty: set size: %w", err)
	}
	return nil
}

// GetSize returns the window size of the terminal behind f.
func GetSize(f *os.File) (Size, error) {
	conn, err := f.SyscallConn()
	if err != nil {
		return Size{}, fmt.Errorf("pty: get size: %w", err)
	}
	var ws *unix.Winsize
	var ierr error
	err = conn.Control(func(fd uintptr) { ws, ierr = unix.IoctlGetWinsize(int(fd), unix.TIOCGWINSZ) })
	if err == nil {
		err = ierr
	}
	if err != nil {
		return Size{}, fmt.Errorf("pty: get size: %w", err)
	}
	return Size{Rows: ws.Row, Cols: ws.Col}, nil
}
