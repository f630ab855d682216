package image

import (
	"debug/elf"
	"fmt"
	"os"
)

// AgentInstallPath is where images carry a copy of the agent binary in the
// root filesystem (the initramfs runs it as /init).
const AgentInstallPath = "/sbin/smolvm-agent"

// readAgent reads the agent binary and checks that it can run as /init: a
// static x86-64 ELF executable without a program interpreter.
func readAgent(path string) ([]byte, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: no agent binary given (build it with `make agent` or CGO_ENABLED=0 go build ./cmd/smolvm-agent)", ErrInvalidAgent)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidAgent, err)
	}
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not an ELF binary: %w", ErrInvalidAgent, path, err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("%w: %s is %v %v, want an x86-64 binary (GOARCH=amd64)", ErrInvalidAgent, path, f.Class, f.Machine)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return nil, fmt.Errorf("%w: %s is not an executable (%v)", ErrInvalidAgent, path, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("%w: %s is dynamically linked; the guest runs it as PID 1 with no libc: "+
				"build it static with CGO_ENABLED=0 go build ./cmd/smolvm-agent (or `make agent`)", ErrInvalidAgent, path)
		}
	}
	return data, nil
}
