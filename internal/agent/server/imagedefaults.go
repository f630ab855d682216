package server

import (
	"strings"

	"github.com/smolvm-go/smolvm/internal/agent/proto"
	"github.com/smolvm-go/smolvm/internal/imagecfg"
)

// imageDefaults fills a's user and directory from the image's run
// configuration where a leaves them empty, and returns the configuration
// (whose env the caller applies under a's). The file is read per command:
// it is small, and a build step may have changed it. An unreadable file
// gives no defaults.
func (s *Server) imageDefaults(a *proto.ExecArgs) imagecfg.Config {
	file := s.opts.ImageConfigFile
	if file == "" {
		file = imagecfg.File
	}
	cfg, err := imagecfg.Read(file)
	if err != nil {
		if s.opts.Logf != nil {
			s.opts.Logf("agent: image config: %v", err)
		}
		return imagecfg.Config{}
	}
	if a.User == "" && cfg.User != "" {
		a.User, _, _ = strings.Cut(cfg.User, ":")
	}
	if a.Dir == "" {
		a.Dir = cfg.Workdir
	}
	return cfg
}
