package image

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v4"
)

// ErrInvalidSpec means an image spec file breaks a rule; the text names
// the field (and line, for decoding errors).
var ErrInvalidSpec = errors.New("invalid image spec")

// Spec is a user image's spec file (YAML):
//
//	from: default            # default | minimal | <cached image> | oci:PATH | tar:PATH
//	packages: [git, make]    # Debian packages (from: default only)
//	files:
//	  - src: ./app           # host path, relative to the spec file
//	    dest: /opt/app       # absolute guest path
//	    mode: "0755"         # optional, octal
//	env: {APP_ENV: prod}
//	run: ["pip install -r /opt/app/requirements.txt"]
//	user: root
//	workdir: /opt/app
//	start: python3 -m http.server 8000
//	ready: curl -fsS localhost:8000
//
// The run steps are not executed by this package: the SDK runs them in a
// booted build VM (see Steps).
type Spec struct {
	// From is the base: default, minimal, the name of a cached image,
	// oci:PATH (an OCI image layout directory or tar, or a docker save
	// archive) or tar:PATH (a root filesystem tarball, or any archive
	// oci: accepts).
	From string `yaml:"from" json:"from"`
	// Packages are Debian packages installed with the base (from: default).
	Packages []string `yaml:"packages,omitempty" json:"packages,omitempty"`
	// Files are host files or directories copied into the image.
	Files []SpecFile `yaml:"files,omitempty" json:"files,omitempty"`
	// Env is set for the start and ready commands and login shells.
	Env map[string]string `yaml:"env,omitempty" json:"env,omitempty"`
	// Run are shell steps run in a build VM, in order.
	Run []string `yaml:"run,omitempty" json:"run,omitempty"`
	// User runs the start command; empty means root (or the OCI image's user).
	User string `yaml:"user,omitempty" json:"user,omitempty"`
	// Workdir is the start command's directory.
	Workdir string `yaml:"workdir,omitempty" json:"workdir,omitempty"`
	// Start is the command (sh -c) started when the VM boots.
	Start string `yaml:"start,omitempty" json:"start,omitempty"`
	// Ready is a command (sh -c) that exits 0 once the VM is ready.
	Ready string `yaml:"ready,omitempty" json:"ready,omitempty"`

	// dir is the spec file's directory, which relative src paths start from.
	dir string
}

// SpecFile is one host file or directory copied into the image.
type SpecFile struct {
	// Src is the host path, relative to the spec file's directory.
	Src string `yaml:"src" json:"src"`
	// Dest is the absolute path in the guest.
	Dest string `yaml:"dest" json:"dest"`
	// Mode is the file's permission bits; 0 keeps the host file's.
	Mode FileMode `yaml:"mode,omitempty" json:"mode,omitempty"`
}

// FileMode is a permission mode written in octal in the spec ("0644").
type FileMode uint32

// UnmarshalYAML reads the mode as octal, quoted or not.
func (m *FileMode) UnmarshalYAML(n *yaml.Node) error {
	v, err := strconv.ParseUint(strings.TrimPrefix(n.Value, "0o"), 8, 32)
	if err != nil || v > 0o7777 {
		return fmt.Errorf("mode %q: want an octal mode such as \"0644\" (at most 07777)", n.Value)
	}
	*m = FileMode(v)
	return nil
}

// Base kinds of Spec.From.
const (
	// FromBuiltin is default or minimal.
	FromBuiltin = "builtin"
	// FromImage is another cached image.
	FromImage = "image"
	// FromOCI is an OCI layout (directory or tar) or docker save archive.
	FromOCI = "oci"
	// FromTar is a root filesystem tarball (or an archive oci: accepts).
	FromTar = "tar"
)

// maxSpecBytes bounds a spec file.
const maxSpecBytes = 1 << 20

// LoadSpec reads and validates a spec file.
func LoadSpec(file string) (*Spec, error) {
	st, err := os.Stat(file)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	if st.Size() > maxSpecBytes {
		return nil, fmt.Errorf("%w: %s is %d bytes, more than %d", ErrInvalidSpec, file, st.Size(), maxSpecBytes)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	abs, err := filepath.Abs(filepath.Dir(file))
	if err != nil {
		return nil, err
	}
	s, err := ParseSpec(b, abs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return s, nil
}

// ParseSpec decodes and validates a spec; dir is where relative paths
// (files' src, oci:/tar: paths) start. Unknown fields are errors.
func ParseSpec(data []byte, dir string) (*Spec, error) {
	var s Spec
	if err := yaml.Load(data, &s, yaml.WithKnownFields()); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalidSpec, fieldAtLine(data, yamlMessage(err)))
	}
	s.dir = dir
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

var (
	unknownFieldRE = regexp.MustCompile(`field (\S+) not found in type \S+`)
	lineRE         = regexp.MustCompile(`^line (\d+): `)
)

// fieldAtLine names the top-level field a "line N: ..." decoding message
// is about ("line 2: run: cannot construct ..."), when it can tell.
func fieldAtLine(data []byte, msg string) string {
	m := lineRE.FindStringSubmatch(msg)
	if m == nil || !strings.Contains(msg, "cannot") {
		return msg
	}
	line, _ := strconv.Atoi(m[1])
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return msg
	}
	kv := doc.Content[0].Content
	field := ""
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i].Line <= line {
			field = kv[i].Value
		}
	}
	if field == "" {
		return msg
	}
	return m[0] + field + ": " + msg[len(m[0]):]
}

// yamlMessage makes a decoding error read as a spec error: "line 3:
// unknown field "bogus"" instead of naming Go types.
func yamlMessage(err error) string {
	m := strings.TrimPrefix(err.Error(), "yaml: ")
	m = strings.ReplaceAll(m, "construct errors:", "")
	m = unknownFieldRE.ReplaceAllString(m, "unknown field \"$1\"")
	return strings.Join(strings.Fields(m), " ")
}

var (
	imageNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	packageRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	envKeyRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	userRE      = regexp.MustCompile(`^([a-z_][a-z0-9_-]{0,31}|[0-9]+)(:([a-z_][a-z0-9_-]{0,31}|[0-9]+))?$`)
)

// CheckName reports whether name can be a user image's name: 1-63
// lower-case letters, digits, '.', '_' or '-', not a built-in name.
func CheckName(name string) error {
	if !imageNameRE.MatchString(name) {
		return fmt.Errorf("%w: image name %q: want 1-63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalidSpec, name)
	}
	if name == NameDefault || name == NameMinimal {
		return fmt.Errorf("%w: image name %q is a built-in image", ErrInvalidSpec, name)
	}
	return nil
}

// Validate checks every field and returns an error naming the first one
// that breaks its rule.
func (s *Spec) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidSpec}, args...)...)
	}
	kind, arg := s.Base()
	switch {
	case s.From == "":
		return bad("from: required (default, minimal, an image name, oci:PATH or tar:PATH)")
	case (kind == FromOCI || kind == FromTar) && arg == "":
		return bad("from: %q names no path", s.From)
	case kind == FromImage && !imageNameRE.MatchString(arg):
		return bad("from: %q is not default, minimal, an image name, oci:PATH or tar:PATH", s.From)
	}
	if len(s.Packages) > 0 && s.From != NameDefault {
		return bad("packages: only with from: default (on other bases install packages in run: steps)")
	}
	for i, p := range s.Packages {
		if !packageRE.MatchString(p) {
			return bad("packages[%d]: %q is not a Debian package name", i, p)
		}
	}
	for i, f := range s.Files {
		if f.Src == "" {
			return bad("files[%d].src: required", i)
		}
		if !path.IsAbs(f.Dest) || path.Clean(f.Dest) != f.Dest || f.Dest == "/" {
			return bad("files[%d].dest: %q must be a clean absolute path other than /", i, f.Dest)
		}
	}
	for k, v := range s.Env {
		if !envKeyRE.MatchString(k) {
			return bad("env: %q is not a variable name (letters, digits, '_', not starting with a digit)", k)
		}
		if strings.ContainsRune(v, 0) {
			return bad("env.%s: contains a NUL byte", k)
		}
	}
	for i, r := range s.Run {
		if strings.TrimSpace(r) == "" {
			return bad("run[%d]: empty step", i)
		}
	}
	if s.User != "" && !userRE.MatchString(s.User) {
		return bad("user: %q is not a user name or uid (optionally :group)", s.User)
	}
	if s.Workdir != "" && (!path.IsAbs(s.Workdir) || path.Clean(s.Workdir) != s.Workdir) {
		return bad("workdir: %q must be a clean absolute path", s.Workdir)
	}
	if s.Ready != "" && s.Start == "" {
		return bad("ready: needs start:")
	}
	return nil
}

// Base splits From into its kind (FromBuiltin, FromImage, FromOCI,
// FromTar) and argument (the image name or the path, made absolute).
func (s *Spec) Base() (kind, arg string) {
	for _, k := range []string{FromOCI, FromTar} {
		if p, ok := strings.CutPrefix(s.From, k+":"); ok {
			if p != "" && !filepath.IsAbs(p) && s.dir != "" {
				p = filepath.Join(s.dir, p)
			}
			return k, p
		}
	}
	if s.From == NameDefault || s.From == NameMinimal {
		return FromBuiltin, s.From
	}
	return FromImage, s.From
}

// SrcPath returns a file's host path, relative paths taken from the spec
// file's directory.
func (s *Spec) SrcPath(f SpecFile) string {
	if filepath.IsAbs(f.Src) || s.dir == "" {
		return f.Src
	}
	return filepath.Join(s.dir, f.Src)
}

// Steps returns the shell steps the SDK must run in a build VM booted from
// the image, in order (the run: steps).
func (s *Spec) Steps() []string { return slices.Clone(s.Run) }
