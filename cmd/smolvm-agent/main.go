// Command smolvm-agent is the SmolVM guest agent. As PID 1 in the guest's
// initramfs it boots the VM (package initd) and runs its command server as
// a child process ("smolvm-agent serve"); otherwise it prints its version.
// It must be a static binary: nothing it imports may use package net or
// os/user.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/smolvm-go/smolvm/internal/guest/initd"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	switch {
	case os.Getpid() == 1:
		runInit()
	case len(os.Args) > 1 && os.Args[1] == initd.ServeArg:
		os.Exit(serve())
	default:
		fmt.Printf("smolvm-agent %s\n", version)
	}
}

// runInit runs the init; if it ever stops, the VM powers off rather than
// letting PID 1 exit and panic the kernel.
func runInit() {
	in := initd.New(initd.Options{
		Version:   version,
		ServeArgs: []string{"/proc/self/exe", initd.ServeArg},
	})
	defer func() {
		if r := recover(); r != nil {
			in.Fatal(r)
		}
		in.Fatal("init returned")
	}()
	if err := in.Run(context.Background()); err != nil {
		in.Fatal(err)
	}
}
