package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"time"
)

// guestFile is where transfers go in the guest: a tmpfs, so the numbers
// are the channel's, not the guest disk's.
const guestFile = "/dev/shm/smolvm-bench.bin"

// TransferResult is file transfer throughput through the agent.
type TransferResult struct {
	Image string `json:"image"`
	MiB   int    `json:"mib"`
	// Upload and Download are the times of vm.Upload and vm.Download.
	Upload   Stats `json:"upload"`
	Download Stats `json:"download"`
	// UploadMiBps and DownloadMiBps are MiB over the p50 time.
	UploadMiBps   float64 `json:"upload_mib_per_s"`
	DownloadMiBps float64 `json:"download_mib_per_s"`
}

// benchTransfer uploads and downloads cfg.transferMiB of random data
// cfg.runs times and checks every download against the upload.
func (b *bench) benchTransfer(ctx context.Context) (*TransferResult, error) {
	vm, _, err := b.boot(ctx, b.vmConfig(b.cfg.image))
	if err != nil {
		return nil, err
	}
	defer vm.ForceDelete(context.WithoutCancel(ctx))
	data := make([]byte, b.cfg.transferMiB<<20)
	rng := rand.NewChaCha8([32]byte{'s', 'm', 'o', 'l'})
	rng.Read(data)
	want := sha256.Sum256(data)
	var up, down []time.Duration
	for i := range b.cfg.runs {
		if r, err := vm.Run(ctx, "rm -f "+guestFile); err != nil || !r.OK() {
			return nil, fmt.Errorf("remove %s: %v %s", guestFile, err, r.Stderr)
		}
		t0 := time.Now()
		if err := vm.Upload(ctx, guestFile, bytes.NewReader(data), 0o600); err != nil {
			return nil, fmt.Errorf("upload: %w", err)
		}
		up = append(up, time.Since(t0))
		h := sha256.New()
		var n counter
		t0 = time.Now()
		if _, err := vm.Download(ctx, guestFile, io.MultiWriter(h, &n)); err != nil {
			return nil, fmt.Errorf("download: %w", err)
		}
		down = append(down, time.Since(t0))
		if int(n) != len(data) || !bytes.Equal(h.Sum(nil), want[:]) {
			return nil, fmt.Errorf("download %d: %d bytes differ from the %d uploaded", i, n, len(data))
		}
		logf("transfer %d: upload %v, download %v", i+1, up[i].Round(time.Millisecond), down[i].Round(time.Millisecond))
	}
	res := &TransferResult{Image: b.cfg.image, MiB: b.cfg.transferMiB, Upload: summarize(up), Download: summarize(down)}
	res.UploadMiBps = ratio(float64(res.MiB)*1000, res.Upload.P50)
	res.DownloadMiBps = ratio(float64(res.MiB)*1000, res.Download.P50)
	return res, nil
}
