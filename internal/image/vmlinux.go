package image

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/pierrec/lz4/v4"
)

// KernelKind says what a kernel file is and so which VMMs can boot it.
type KernelKind string

// Kernel kinds recorded in the manifest.
const (
	// KernelBzImage is an x86 boot image; QEMU boots it directly and a
	// vmlinux for Firecracker is extracted from it.
	KernelBzImage KernelKind = "bzImage"
	// KernelELF is an x86-64 ELF vmlinux without a PVH entry note:
	// Firecracker boots it, QEMU cannot.
	KernelELF KernelKind = "elf"
	// KernelELFPVH is an x86-64 ELF vmlinux with a PVH entry note: both
	// Firecracker and QEMU boot it.
	KernelELFPVH KernelKind = "elf-pvh"
)

// lz4LegacyMagic starts the legacy LZ4 frame the kernel's "lz4 -l" writes.
const lz4LegacyMagic = 0x184C2102

// xenElfnotePhys32Entry is the ELF note type of a PVH entry point.
const xenElfnotePhys32Entry = 18

// isBzImage reports whether b starts with an x86 boot sector carrying the
// "HdrS" setup header.
func isBzImage(b []byte) bool {
	return len(b) > 0x264 && b[0x1fe] == 0x55 && b[0x1ff] == 0xaa && string(b[0x202:0x206]) == "HdrS"
}

// kernelKind classifies a kernel file's contents.
func kernelKind(b []byte) (KernelKind, error) {
	if isBzImage(b) {
		return KernelBzImage, nil
	}
	if err := checkVmlinux(b); err != nil {
		return "", err
	}
	if hasPVHNote(b) {
		return KernelELFPVH, nil
	}
	return KernelELF, nil
}

// ExtractVmlinux returns the ELF vmlinux inside an LZ4-compressed bzImage
// (Debian's kernels use CONFIG_KERNEL_LZ4). The result is checked with
// debug/elf: ELF64, x86-64, ET_EXEC, non-zero entry, at least one PT_LOAD.
func ExtractVmlinux(bz []byte) ([]byte, error) {
	if !isBzImage(bz) {
		return nil, fmt.Errorf("%w: not a bzImage (no HdrS setup header)", ErrInvalidKernel)
	}
	payload := bzPayload(bz)
	if payload == nil {
		// Old boot protocol or odd layout: search for the frame magic.
		var magic [4]byte
		binary.LittleEndian.PutUint32(magic[:], lz4LegacyMagic)
		i := bytes.Index(bz, magic[:])
		if i < 0 {
			return nil, fmt.Errorf("%w: no LZ4 payload in bzImage (only LZ4-compressed kernels are supported)", ErrInvalidKernel)
		}
		payload = bz[i:]
	}
	out, err := decodeLZ4Legacy(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: decompress vmlinux: %w", ErrInvalidKernel, err)
	}
	if err := checkVmlinux(out); err != nil {
		return nil, err
	}
	return out, nil
}

// bzPayload returns the compressed payload named by the setup header
// (boot protocol 2.08+), or nil if it is not an LZ4 legacy frame.
func bzPayload(bz []byte) []byte {
	setupSects := int(bz[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	version := binary.LittleEndian.Uint16(bz[0x206:])
	if version < 0x208 {
		return nil
	}
	off := (setupSects+1)*512 + int(binary.LittleEndian.Uint32(bz[0x248:]))
	n := int(binary.LittleEndian.Uint32(bz[0x24c:]))
	if off < 0 || n < 8 || off+n > len(bz) {
		return nil
	}
	p := bz[off : off+n]
	if binary.LittleEndian.Uint32(p) != lz4LegacyMagic {
		return nil
	}
	return p
}

// decodeLZ4Legacy decodes legacy LZ4 frames: a magic, then blocks each
// prefixed by a little-endian compressed length, each decompressing to at
// most 8 MiB. The kernel appends the uncompressed size as 4 more bytes; it
// is used to check the result when present.
func decodeLZ4Legacy(p []byte) ([]byte, error) {
	const maxBlock = 8 << 20
	if len(p) < 4 || binary.LittleEndian.Uint32(p) != lz4LegacyMagic {
		return nil, errors.New("missing LZ4 legacy magic")
	}
	var out []byte
	buf := make([]byte, maxBlock)
	i := 4
	for len(p)-i >= 4 {
		n := int(binary.LittleEndian.Uint32(p[i:]))
		if n == lz4LegacyMagic {
			i += 4
			continue
		}
		if n == 0 || n > len(p)-i-4 {
			// The kernel's trailing size word (or garbage after the
			// stream): stop here.
			break
		}
		m, err := lz4.UncompressBlock(p[i+4:i+4+n], buf)
		if err != nil {
			return nil, fmt.Errorf("block at offset %d: %w", i, err)
		}
		out = append(out, buf[:m]...)
		i += 4 + n
	}
	if len(p)-i == 4 {
		if want := int(binary.LittleEndian.Uint32(p[i:])); want != len(out) {
			return nil, fmt.Errorf("decompressed %d bytes, trailer says %d", len(out), want)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("empty LZ4 stream")
	}
	return out, nil
}

// checkVmlinux reports, as an ErrInvalidKernel error, why b is not a
// bootable x86-64 vmlinux.
func checkVmlinux(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("%w: neither a bzImage nor an ELF file: %w", ErrInvalidKernel, err)
	}
	defer f.Close()
	switch {
	case f.Class != elf.ELFCLASS64:
		return fmt.Errorf("%w: ELF class %v, want ELFCLASS64", ErrInvalidKernel, f.Class)
	case f.Machine != elf.EM_X86_64:
		return fmt.Errorf("%w: ELF machine %v, want EM_X86_64", ErrInvalidKernel, f.Machine)
	case f.Type != elf.ET_EXEC:
		return fmt.Errorf("%w: ELF type %v, want ET_EXEC", ErrInvalidKernel, f.Type)
	case f.Entry == 0:
		return fmt.Errorf("%w: ELF entry point is 0", ErrInvalidKernel)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			return nil
		}
	}
	return fmt.Errorf("%w: ELF has no PT_LOAD segment", ErrInvalidKernel)
}

// hasPVHNote reports whether an ELF vmlinux has the Xen PVH entry note
// that lets QEMU boot it directly.
func hasPVHNote(b []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			continue
		}
		for len(data) >= 12 {
			namesz := int(binary.LittleEndian.Uint32(data))
			descsz := int(binary.LittleEndian.Uint32(data[4:]))
			typ := binary.LittleEndian.Uint32(data[8:])
			nameEnd := 12 + (namesz+3)&^3
			end := nameEnd + (descsz+3)&^3
			if end > len(data) || nameEnd > len(data) {
				break
			}
			if typ == xenElfnotePhys32Entry && bytes.HasPrefix(data[12:12+namesz], []byte("Xen")) {
				return true
			}
			data = data[end:]
		}
	}
	return false
}
