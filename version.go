package smolvm

import "runtime/debug"

// Version is SmolVM's version: set at link time with
// -ldflags "-X github.com/smolvm-go/smolvm.Version=v1.2.3", else taken from
// the module's build information.
var Version = ""

// GetVersion returns Version, the module version, or "devel".
func GetVersion() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			return v
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "devel-" + s.Value[:12]
			}
		}
	}
	return "devel"
}
