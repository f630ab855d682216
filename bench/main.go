// Command bench measures where SmolVM's time and memory go: the phases of a
// VM's lifecycle against a bare QEMU boot of the same image, command latency
// over the guest agent against SSH, many VMs started at once, and file
// transfer throughput. It prints a table and can write JSON and a PNG.
//
// Run it as root from the module root:
//
//	go run ./bench                      # quick settings, a few minutes
//	go run ./bench -n 20 --json out.json --plot out.png
//
// Every VM it boots, and every TAP device and nftables rule that SmolVM makes
// for them, lives in a private network namespace that the command creates,
// re-executes itself in and deletes at the end (also on failure or Ctrl-C).
// Images are built before entering it, while the package archive is reachable.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config is what the flags ask for.
type config struct {
	runs        int
	cmds        int
	image       string
	memMiB      int
	concurrency []int
	skip        map[string]bool
	dataDir     string
	imageDir    string
	jsonPath    string
	plotPath    string
	fromJSON    string
	transferMiB int
	bootTimeout time.Duration
	settle      time.Duration
}

// sections are the parts of the benchmark that --skip can name.
var sections = []string{"lifecycle", "baseline", "ssh", "concurrency", "transfer", "snapshot", "api"}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.IntVar(&c.runs, "n", 5, "runs per lifecycle phase, bare boot and transfer direction")
	fs.IntVar(&c.cmds, "cmds", 20, "commands per latency measurement (warm commands, agent vs SSH)")
	fs.StringVar(&c.image, "image", "minimal", "image for the lifecycle, concurrency and transfer runs: minimal or default (SSH always uses default)")
	fs.IntVar(&c.memMiB, "mem", 512, "guest memory in MiB")
	conc := fs.String("concurrency", "1,2,4,8", "comma-separated numbers of VMs started at once")
	skip := fs.String("skip", "", "comma-separated sections to skip: "+strings.Join(sections, ","))
	fs.StringVar(&c.dataDir, "data-dir", "", "SmolVM data directory (default: a temporary directory removed at the end)")
	fs.StringVar(&c.imageDir, "image-dir", "", "image cache, kept between runs (default $SMOLVM_IMAGE_DIR, else <user cache dir>/smolvm-bench/images)")
	fs.StringVar(&c.jsonPath, "json", "", "write the results as JSON to this file")
	fs.StringVar(&c.plotPath, "plot", "", "draw the phase breakdown and the concurrency curve into this PNG file")
	fs.StringVar(&c.fromJSON, "from-json", "", "boot nothing: print (and --plot) the results saved earlier with --json in this file")
	fs.IntVar(&c.transferMiB, "transfer-mib", 64, "size of the file uploaded and downloaded, in MiB")
	fs.DurationVar(&c.bootTimeout, "boot-timeout", 240*time.Second, "how long a VM may take to answer (many VMs at once on few cores are slow)")
	fs.DurationVar(&c.settle, "settle", 3*time.Second, "idle time before reading a VM's memory")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if c.runs < 1 || c.cmds < 1 || c.transferMiB < 1 {
		return c, errors.New("-n, --cmds and --transfer-mib must be at least 1")
	}
	if c.image != "minimal" && c.image != "default" {
		return c, fmt.Errorf("--image %q: want minimal or default", c.image)
	}
	for _, f := range strings.Split(*conc, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > 64 {
			return c, fmt.Errorf("--concurrency: %q is not a number from 1 to 64", f)
		}
		c.concurrency = append(c.concurrency, n)
	}
	c.skip = map[string]bool{}
	for _, s := range strings.Split(*skip, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if !contains(sections, s) {
			return c, fmt.Errorf("--skip: unknown section %q (want %s)", s, strings.Join(sections, ","))
		}
		c.skip[s] = true
	}
	for _, p := range []*string{&c.dataDir, &c.imageDir, &c.jsonPath, &c.plotPath, &c.fromJSON} {
		if *p != "" {
			abs, err := filepath.Abs(*p)
			if err != nil {
				return c, err
			}
			*p = abs
		}
	}
	return c, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// images returns the images the requested sections boot.
func (c config) images() []string {
	var imgs []string
	if !c.skip["lifecycle"] || !c.skip["baseline"] || !c.skip["concurrency"] || !c.skip["transfer"] || !c.skip["snapshot"] || !c.skip["api"] {
		imgs = append(imgs, c.image)
	}
	if !c.skip["ssh"] && !contains(imgs, "default") {
		imgs = append(imgs, "default")
	}
	return imgs
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch ns := os.Getenv(envNetns); {
	case cfg.fromJSON != "":
		err = replay(cfg)
	case ns != "":
		_, err = runInside(ctx, cfg, ns)
	default:
		err = runOutside(ctx, cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		stop()
		os.Exit(1)
	}
}
