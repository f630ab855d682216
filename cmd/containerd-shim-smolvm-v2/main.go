// Command containerd-shim-smolvm-v2 is SmolVM's containerd runtime shim:
// `ctr run --runtime io.containerd.smolvm.v2 ...`, or a Kubernetes
// RuntimeClass whose handler is configured with
// runtime_type = "io.containerd.smolvm.v2". Each task runs in its own
// microVM.
package main

import "github.com/smolvm-go/smolvm/internal/shim"

func main() { shim.Run() }
