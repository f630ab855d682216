package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm/client"
	"github.com/smolvm-go/smolvm/internal/server"
)

func newServeCmd(g *globals) *cobra.Command {
	var listen, cert, key, keyFile, logFormat string
	var noAuth bool
	var maxPerKey int
	var shutdown time.Duration
	c := &cobra.Command{
		Use:   "serve [--listen 127.0.0.1:7070] [--tls-cert F --tls-key F] [--api-key-file F]",
		Short: "Serve the HTTP API (sandboxes, exec, files, metrics)",
		Long: `Serve SmolVM's HTTP API on --listen. Requests carry an API key ('Authorization: Bearer KEY'
or 'X-API-Key: KEY'): keys made with 'smolvm apikey create', or one key from $SMOLVM_API_KEY
or --api-key-file. Without any key the server refuses to start, unless --insecure-no-auth on a
loopback address. The OpenAPI document is at /openapi.json, metrics at /metrics.

SIGTERM or SIGINT stops the server gracefully; sandboxes keep running and a restarted server
serves them again, and enforces their timeouts.`,
		Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if g.remoteURL() != "" {
				return errLocalOnly()
			}
			if (cert == "") != (key == "") {
				return usageError{fmt.Errorf("--tls-cert and --tls-key go together")}
			}
			if maxPerKey < 1 {
				return usageError{fmt.Errorf("--max-sandboxes-per-key %d: must be at least 1", maxPerKey)}
			}
			var h slog.Handler = slog.NewTextHandler(c.ErrOrStderr(), nil)
			switch logFormat {
			case "text":
			case "json":
				h = slog.NewJSONHandler(c.ErrOrStderr(), nil)
			default:
				return usageError{fmt.Errorf("--log-format %q: must be text or json", logFormat)}
			}
			log := slog.New(h)
			loopback := server.IsLoopback(listen)
			if _, _, err := net.SplitHostPort(listen); err != nil {
				return usageError{fmt.Errorf("--listen %q: want HOST:PORT: %v", listen, err)}
			}
			if noAuth && !loopback {
				return usageError{fmt.Errorf("--insecure-no-auth is allowed only on a loopback address, not %s", listen)}
			}
			var static []string
			if k := strings.TrimSpace(os.Getenv(client.APIKeyEnv)); k != "" {
				static = append(static, k)
			}
			if keyFile != "" {
				b, err := os.ReadFile(keyFile)
				if err != nil {
					return usageError{fmt.Errorf("--api-key-file: %w", err)}
				}
				k := strings.TrimSpace(string(b))
				if len(k) < 16 {
					return usageError{fmt.Errorf("--api-key-file %s: the key must be at least 16 characters", keyFile)}
				}
				static = append(static, k)
			}
			hst, err := g.host(c.Context())
			if err != nil {
				return err
			}
			srv, err := server.New(c.Context(), server.Options{Host: hst, StaticKeys: static, NoAuth: noAuth, MaxRunningPerKey: maxPerKey, Logger: log})
			if err != nil {
				return err
			}
			defer srv.Close()
			if !noAuth {
				ok, err := srv.HasKeys(c.Context())
				if err != nil {
					return err
				}
				if !ok {
					return usageError{fmt.Errorf("no API key: create one with 'smolvm apikey create', or set $%s or --api-key-file (or --insecure-no-auth on loopback)", client.APIKeyEnv)}
				}
			}
			if !loopback && cert == "" {
				log.Warn("listening beyond loopback without TLS: API keys and data cross the network in clear text; use --tls-cert/--tls-key or a TLS proxy", "listen", listen)
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", listen, err)
			}
			scheme := "http"
			if cert != "" {
				scheme = "https"
			}
			log.Info("serving", "url", scheme+"://"+ln.Addr().String(), "data_dir", hst.DataDir(), "auth", !noAuth)
			err = srv.Serve(c.Context(), ln, server.ServeOptions{TLSCert: cert, TLSKey: key, ShutdownTimeout: shutdown})
			log.Info("stopped; sandboxes keep running")
			return err
		},
	}
	fl := c.Flags()
	fl.StringVar(&listen, "listen", "127.0.0.1:7070", "address to listen on")
	fl.StringVar(&cert, "tls-cert", "", "TLS certificate (PEM)")
	fl.StringVar(&key, "tls-key", "", "TLS private key (PEM)")
	fl.StringVar(&keyFile, "api-key-file", "", "a file holding one accepted API key (besides $SMOLVM_API_KEY and 'smolvm apikey' keys)")
	fl.BoolVar(&noAuth, "insecure-no-auth", false, "accept requests without a key (loopback only)")
	fl.IntVar(&maxPerKey, "max-sandboxes-per-key", server.DefaultMaxRunningPerKey, "sandboxes one key may have created, running or paused at once")
	fl.DurationVar(&shutdown, "shutdown-timeout", 30*time.Second, "how long requests in flight may finish on SIGTERM")
	fl.StringVar(&logFormat, "log-format", "text", "text or json")
	return c
}
